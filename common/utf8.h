/*
 * utf8: the one strict UTF-8 decoder step (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF), shared by the import validator
 * (api/) and the rejects writer (fs/). Pure; safe from any thread.
 */
#ifndef DTFS_UTF8_H
#define DTFS_UTF8_H

#include <stddef.h>

/* Length (1..4) of the well-formed UTF-8 sequence at s, which has n > 0
 * bytes left, or 0 when it is not one. */
size_t utf8_seq_len(const unsigned char *s, size_t n);

#endif
