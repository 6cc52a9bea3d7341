/*
 * hash: a small non-cryptographic 64-bit digest (FNV-1a), fed in pieces,
 * for content identities (a table version without an ETag) and file names
 * (the shared budget of a client id). Not for secrets: equal digests of
 * different data are possible (about 2^-64 for unrelated inputs), never
 * forged against an adversary's choice.
 */
#ifndef DTFS_COMMON_HASH_H
#define DTFS_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_INIT UINT64_C(0xcbf29ce484222325)

/* Feed n bytes into the running digest h (start with HASH_INIT). */
uint64_t hash_add(uint64_t h, const void *data, size_t n);

/* h as 16 lower-case hex digits and a NUL (buf of at least 17 bytes). */
void hash_hex(uint64_t h, char *buf);

#endif
