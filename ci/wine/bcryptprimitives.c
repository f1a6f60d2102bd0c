/*
 * A stand-in bcryptprimitives.dll for running Rust test binaries under Wine 8.
 *
 * Rust's standard library on Windows imports ProcessPrng from bcryptprimitives.dll, which
 * Wine 8.0 does not provide, so every Rust program fails to start there. Placed beside the
 * .exe, this DLL provides ProcessPrng by filling the buffer through RtlGenRandom
 * (SystemFunction036 in advapi32), which Wine implements. Used by .ci/windows.sh only; never
 * shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
