/*
 * Test-only stand-in for Windows' bcryptprimitives.dll, for running the
 * cross-built epm-agent.exe under Wine 8, which lacks that DLL. Rust's
 * standard library takes its random bytes (HashMap seeds) from
 * ProcessPrng; this one asks RtlGenRandom (advapi32's SystemFunction036),
 * which Wine has. Never shipped: real Windows 8 and later have the DLL.
 *
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *       bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
