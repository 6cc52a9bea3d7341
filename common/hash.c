#include "hash.h"

#include <stdio.h>

uint64_t hash_add(uint64_t h, const void *data, size_t n)
{
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

void hash_hex(uint64_t h, char *buf)
{
	snprintf(buf, 17, "%016llx", (unsigned long long)h);
}
