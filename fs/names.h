/*
 * names: table names ↔ file names. A table name is used as it is, except
 * '%' → %25, '/' → %2F and control characters (newline → %0A, tab → %09,
 * …), a name of "." or ".." is fully percent-encoded and "" is "%00", so
 * every name is a valid, reversible file name. (Names holding a NUL never
 * get here: the listing skips them.)
 */
#ifndef DTFS_FS_NAMES_H
#define DTFS_FS_NAMES_H

#include <stddef.h>

/* Encode a table name into buf. Returns 0 or -ENAMETOOLONG. */
int fs_name_encode(const char *name, char *buf, size_t size)
	__attribute__((warn_unused_result));

/* Decode a file name into buf. Returns 0, -EINVAL (a bad % escape or an
 * encoding that fs_name_encode would not produce), -ENAMETOOLONG. */
int fs_name_decode(const char *file, char *buf, size_t size)
	__attribute__((warn_unused_result));

/* Append s to buf as a JSON string literal (with quotes) at *pos, escaping
 * as RFC 8259 requires. Returns 0 or -ENOSPC. */
int fs_json_string(char *buf, size_t size, size_t *pos, const char *s)
	__attribute__((warn_unused_result));

#endif
