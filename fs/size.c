/*
 * size: the exact st_size of rows.jsonl, for tools that copy by size.
 *
 * tar and rsync read st_size bytes of a regular file, whatever is there:
 * a size of 0 for a table not yet cached made them store empty files with
 * exit status 0, and the size of a version older than the one an open
 * would read cut them short. So the version is revalidated as an open
 * would do it (in the cursor dialect, where that is one If-None-Match),
 * and when it is not completely cached the table is read
 * whole through an ordinary reader: its pages land in the cache (shared
 * with readers of the same table, whose frontier fetch is one at a time,
 * so a stat racing a cat fetches each page once), and the next open reads
 * them from there. The lazy_size option skips it (size 0, the old way).
 */
#include "engine_i.h"

#include <errno.h>
#include <stdlib.h>

#define SIZE_READ (256 * 1024)

int fs_table_rows_exact_size(struct fs_engine *eng, struct fs_table *t,
			     uint64_t *size, uint64_t *gen)
{
	struct fs_reader *rd = NULL;
	struct cache_meta m;
	uint64_t off = 0;
	size_t n = 0;
	char *buf;
	int rc;

	*size = fs_table_rows_size(eng, t, gen);
	if (eng->cfg.lazy_size)
		return 0;
	/* where a revalidation re-reads the table (no versions: the
	 * production dialect, whose request budget is small) a stat trusts
	 * a complete copy until an import voids it or an open revalidates */
	if (!eng->caps.versions && *gen &&
	    !cache_get_meta(eng->cache, t->id, &m) && m.validated_at)
		return 0;
	/* the open revalidates as every open does (at most once per
	 * `revalidate` seconds): a size cached before an import or a change
	 * on the server would cut tar's copy short */
	rc = fs_reader_open(eng, t, &rd);
	if (!rc && fs_reader_complete(rd, size)) {
		*gen = fs_reader_gen(rd);
		fs_reader_close(rd);
		return 0;
	}
	buf = malloc(SIZE_READ);
	if (!buf) {
		if (rd)
			fs_reader_close(rd);
		return -ENOMEM;
	}
	while (!rc) {
		rc = fs_reader_read(rd, off, buf, SIZE_READ, &n);
		if (rc || n < SIZE_READ)
			break;
		off += n;
	}
	if (!rc && fs_reader_complete(rd, size)) {
		*gen = fs_reader_gen(rd);
	} else if (!rc) {
		*size = off + n;	/* read to its end: the same bytes */
		*gen = 0;
	}
	if (rd)
		fs_reader_close(rd);
	free(buf);
	return rc;
}
