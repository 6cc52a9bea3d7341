/*
 * csv.c: RFC 4180 CSV to and from the canonical JSONL rows.
 *
 * Not implemented yet: both functions return -ENOSYS.
 */
#include <errno.h>

#include "api_i.h"

int api_csv_encode(const struct api_schema *schema, const char *const *rows,
		   const size_t *lens, size_t nrows, char **csv, size_t *len)
{
	(void)schema;
	(void)rows;
	(void)lens;
	(void)nrows;
	(void)csv;
	(void)len;
	return -ENOSYS;
}

int api_csv_to_jsonl(const struct api_schema *schema, const char *csv,
		     size_t len, char **jsonl, size_t *jsonl_len)
{
	(void)schema;
	(void)csv;
	(void)len;
	*jsonl = NULL;
	*jsonl_len = 0;
	return -ENOSYS;
}
