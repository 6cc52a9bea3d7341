/*
 * ops: the fuse_operations of dtfs. Paths are "/", "/TABLE" and
 * "/TABLE/FILE" with FILE one of schema.json, rows.jsonl, rejects.jsonl,
 * status.json, rows.csv; TABLE is a file name as names.h encodes it.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "engine.h"
#include "log.h"
#include "names.h"

enum fs_file {
	FS_NONE,	/* "/" or a table directory */
	FS_SCHEMA,
	FS_ROWS,
	FS_REJECTS,
	FS_STATUS,
	FS_CSV,		/* rows.csv: rows.jsonl as CSV (csvview.c) */
};

static const char *const file_names[] = {
	[FS_SCHEMA] = "schema.json",
	[FS_ROWS] = "rows.jsonl",
	[FS_REJECTS] = "rejects.jsonl",
	[FS_STATUS] = "status.json",
	[FS_CSV] = "rows.csv",
};

/* An open file. */
struct handle {
	enum fs_file file;
	struct fs_table *t;
	struct fs_reader *rd;	/* rows.jsonl read */
	struct fs_import *im;	/* rows.jsonl or rows.csv write */
	struct fs_csv_reader *crd; /* rows.csv read */
	pid_t opener;		/* thread-group id of the process that opened */
	char *buf;		/* schema.json, status.json */
	size_t len;
	char *pending;		/* schema.json of a pending table: its name */
	bool swrite;		/* schema.json opened for writing: buf/len is
				   what is written */
	bool sdirty;		/* written since the last flush */
	int sresult;		/* the last flush's result */
	int fd;			/* rejects.jsonl */
	bool page_cached;	/* counted in face->cached_handles */
};

struct fs_face_opts fs_face_opts = {
	.entry_timeout = FS_DEFAULT_TIMEOUT,
	.attr_timeout = FS_DEFAULT_TIMEOUT,
	.negative_timeout = FS_DEFAULT_TIMEOUT,
	.umask = 0,
};

/* Guards every table's fs_face_gens. */
static pthread_mutex_t face_lock = PTHREAD_MUTEX_INITIALIZER;
static time_t mount_time;

static struct fs_engine *engine(void)
{
	return fuse_get_context()->private_data;
}

/* Split a path into its table and file. Returns 0, -ENOENT. */
static int resolve(const char *path, struct fs_table **t, enum fs_file *file)
{
	char enc[NAME_MAX + 1], name[1024];
	const char *p = path + 1, *slash;
	size_t n;
	int i, rc;

	*t = NULL;
	*file = FS_NONE;
	if (!*p)
		return 0;
	slash = strchr(p, '/');
	n = slash ? (size_t)(slash - p) : strlen(p);
	if (n == 0 || n > NAME_MAX)
		return -ENOENT;
	memcpy(enc, p, n);
	enc[n] = '\0';
	if (fs_name_decode(enc, name, sizeof(name)))
		return -ENOENT;
	rc = fs_engine_lookup(engine(), name, t);
	if (rc)
		return rc;
	if (!slash)
		return 0;
	for (i = FS_SCHEMA; i <= FS_CSV; i++) {
		if (!strcmp(slash + 1, file_names[i])) {
			*file = (enum fs_file)i;
			return 0;
		}
	}
	return -ENOENT;
}

/*
 * A path under a pending table (mkdir'ed, no schema yet): 1 for the
 * directory, 2 for its schema.json, 0 otherwise; name gets the table name.
 */
static int pending_of(const char *path, char *name, size_t size)
{
	char enc[NAME_MAX + 1];
	const char *p = path + 1, *slash = strchr(p, '/');
	size_t n = slash ? (size_t)(slash - p) : strlen(p);

	if (n == 0 || n > NAME_MAX)
		return 0;
	memcpy(enc, p, n);
	enc[n] = '\0';
	if (fs_name_decode(enc, name, size) ||
	    !fs_engine_is_pending(engine(), name))
		return 0;
	if (!slash)
		return 1;
	return strcmp(slash + 1, "schema.json") ? 0 : 2;
}

/* The thread-group id of a thread: FUSE reports thread ids, and a
 * process's threads must count as the process (mountpoint-s3, goofys). */
static pid_t tgid_of(pid_t tid)
{
	char path[64], line[256];
	pid_t tgid = tid;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return tid;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "Tgid:", 5)) {
			tgid = (pid_t)strtol(line + 5, NULL, 10);
			break;
		}
	}
	fclose(f);
	return tgid;
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	/* O_TRUNC arrives with open, so a truncate is never sent before an
	 * import: a truncate alone must never empty a table. */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* the kernel must not handle O_APPEND or read on write-only handles */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	conn->max_background = 64;
	/* the user's values or dtfs's (main.c); kernel_cache is refused there */
	cfg->entry_timeout = fs_face_opts.entry_timeout;
	cfg->attr_timeout = fs_face_opts.attr_timeout;
	cfg->negative_timeout = fs_face_opts.negative_timeout;
	cfg->use_ino = 0;
	cfg->kernel_cache = 0;
	cfg->direct_io = 0;
	/* a reader killed or interrupted while its page is fetched gets
	 * EINTR at once, not after the retry budget */
	api_set_interrupt_check(fuse_interrupted);
	mount_time = time(NULL);
	return fuse_get_context()->private_data;
}

static void fs_destroy(void *data)
{
	(void)data;
}

static int fs_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	struct fs_engine *eng = engine();
	bool ro = fs_engine_config(eng)->ro;
	struct fs_table *t;
	enum fs_file file;
	uint64_t gen = 0;
	int rc;

	memset(st, 0, sizeof(*st));
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_atime = st->st_mtime = st->st_ctime = mount_time;
	rc = resolve(path, &t, &file);
	if (rc == -ENOENT) {
		char name[1024];

		switch (pending_of(path, name, sizeof(name))) {
		case 1:
			st->st_mode = S_IFDIR | (0555 & ~fs_face_opts.umask);
			st->st_nlink = 2;
			return 0;
		case 2:
			st->st_mode = S_IFREG | (0644 & ~fs_face_opts.umask);
			st->st_nlink = 1;
			return 0;
		}
	}
	if (rc)
		return rc;
	/* modes tell the truth: no directory takes new entries but the root
	 * where mkdir makes tables (flows), no file is executable, only
	 * rows.jsonl, rows.csv and schema.json are writable (unless ro) */
	switch (file) {
	case FS_NONE:
		st->st_mode = S_IFDIR | (0555 & ~fs_face_opts.umask);
		if (!t && fs_engine_can_create(eng))
			st->st_mode |= 0200 & ~fs_face_opts.umask;
		st->st_nlink = 2;
		return 0;
	case FS_ROWS: {
		struct fs_face_gens *face = fs_table_face(t);
		uint64_t size = fs_table_rows_size(eng, t, &gen);

		st->st_mode = S_IFREG | (ro ? 0444 : 0644);
		/*
		 * The kernel ends page-cache reads at st_size, on every open
		 * handle: while a handle reads a version through the page
		 * cache, a new version's size (0 while incomplete) would cut
		 * it short with success. Keep telling that version's size
		 * until the last such handle closes.
		 */
		pthread_mutex_lock(&face_lock);
		if (face->cached_handles) {
			size = face->kernel_size;
		} else {
			face->attr = gen;
		}
		pthread_mutex_unlock(&face_lock);
		st->st_size = (off_t)size;
		break;
	}
	case FS_CSV:
		st->st_mode = S_IFREG | (ro ? 0444 : 0644);
		st->st_size = (off_t)fs_table_csv_size(eng, t);
		break;
	case FS_SCHEMA:
		st->st_mode = S_IFREG | (ro ? 0444 : 0644);
		st->st_size = (off_t)fs_table_schema_size(eng, t);
		break;
	case FS_REJECTS: {
		char *p = fs_table_rejects_path(eng, t);
		struct stat rs;

		st->st_mode = S_IFREG | 0444;
		if (p && stat(p, &rs) == 0)
			st->st_size = rs.st_size;
		free(p);
		break;
	}
	case FS_STATUS:
		st->st_mode = S_IFREG | 0444;
		break;
	}
	st->st_mode &= ~fs_face_opts.umask;
	st->st_nlink = 1;
	(void)fi;
	return 0;
}

/* The pending tables (mkdir'ed, no schema yet) in the root listing. */
static int fill_pending(struct fs_engine *eng, void *buf,
			fuse_fill_dir_t fill)
{
	char **names;
	size_t i, n;
	int rc = fs_engine_pending_list(eng, &names, &n);

	for (i = 0; !rc && i < n; i++) {
		char enc[NAME_MAX + 1];

		if (!fs_name_encode(names[i], enc, sizeof(enc)))
			fill(buf, enc, NULL, 0, 0);
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	struct fs_engine *eng = engine();
	struct fs_table *t, **tables;
	enum fs_file file;
	size_t i, n;
	int rc;

	(void)off;
	(void)fi;
	(void)flags;
	rc = resolve(path, &t, &file);
	if (rc == -ENOENT) {
		char name[1024];

		if (pending_of(path, name, sizeof(name)) != 1)
			return rc;
		fill(buf, ".", NULL, 0, 0);
		fill(buf, "..", NULL, 0, 0);
		fill(buf, "schema.json", NULL, 0, 0);
		return 0;
	}
	if (rc)
		return rc;
	if (file != FS_NONE)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	if (t) {
		for (i = FS_SCHEMA; i <= FS_CSV; i++)
			fill(buf, file_names[i], NULL, 0, 0);
		return 0;
	}
	rc = fs_engine_list(eng, &tables, &n);
	if (rc)
		return rc;
	for (i = 0; i < n; i++) {
		char enc[NAME_MAX + 1];

		if (fs_name_encode(fs_table_name(tables[i]), enc,
				   sizeof(enc))) {
			log_warn("table '%s' has a name too long for a file "
				 "name; not shown", fs_table_name(tables[i]));
			continue;
		}
		fill(buf, enc, NULL, 0, 0);
	}
	free(tables);
	return fill_pending(eng, buf, fill);
}

static void handle_free(struct handle *h)
{
	if (h->page_cached) {
		pthread_mutex_lock(&face_lock);
		fs_table_face(h->t)->cached_handles--;
		pthread_mutex_unlock(&face_lock);
	}
	if (h->rd)
		fs_reader_close(h->rd);
	if (h->crd)
		fs_csv_close(h->crd);
	if (h->im)
		fs_import_end(h->im);
	if (h->fd >= 0)
		close(h->fd);
	free(h->buf);
	free(h->pending);
	free(h);
}

static int open_rows_read(struct fs_engine *eng, struct handle *h,
			  struct fuse_file_info *fi)
{
	struct fs_face_gens *face = fs_table_face(h->t);
	uint64_t size, gen;
	int rc;

	rc = fs_reader_open(eng, h->t, &h->rd);
	if (rc)
		return rc;
	/*
	 * Through the page cache only when the version is complete and the
	 * kernel was told its exact size; otherwise direct I/O, so tools read
	 * to the end whatever st_size said. The kernel keeps cached pages
	 * only if they are of this very generation. While handles read one
	 * generation through the page cache, every other generation is
	 * direct I/O and keeps the cache (theirs), and st_size stays theirs
	 * (fs_getattr).
	 */
	pthread_mutex_lock(&face_lock);
	gen = fs_reader_gen(h->rd);
	if (fs_reader_complete(h->rd, &size) &&
	    (face->cached_handles ? face->kernel == gen : face->attr == gen)) {
		fi->keep_cache = face->kernel == gen;
		face->kernel = gen;
		face->kernel_size = size;
		face->cached_handles++;
		h->page_cached = true;
	} else {
		fi->direct_io = 1;
		fi->keep_cache = face->cached_handles > 0;
	}
	pthread_mutex_unlock(&face_lock);
	return 0;
}

/* schema.json of a pending table: empty until written; writing it
 * creates the table at close. */
static int open_pending(const char *path, struct fuse_file_info *fi)
{
	struct handle *h;
	char name[1024];

	if (pending_of(path, name, sizeof(name)) != 2)
		return -ENOENT;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->file = FS_SCHEMA;
	h->fd = -1;
	h->pending = strdup(name);
	if (!h->pending) {
		free(h);
		return -ENOMEM;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		h->swrite = true;
		h->opener = tgid_of(fuse_get_context()->pid);
	}
	fi->direct_io = 1;
	fi->fh = (uint64_t)(uintptr_t)h;
	return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
	struct fs_engine *eng = engine();
	int acc = fi->flags & O_ACCMODE;
	struct handle *h;
	enum fs_file file;
	struct fs_table *t;
	int rc;

	rc = resolve(path, &t, &file);
	if (rc == -ENOENT)
		return open_pending(path, fi);
	if (rc)
		return rc;
	if (file == FS_NONE)
		return -EISDIR;
	if (acc != O_RDONLY &&
	    ((file != FS_ROWS && file != FS_CSV && file != FS_SCHEMA) ||
	     fs_engine_config(eng)->ro))
		return -EROFS;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->file = file;
	h->t = t;
	h->fd = -1;
	switch (file) {
	case FS_ROWS:
		if (acc == O_RDONLY) {
			rc = open_rows_read(eng, h, fi);
		} else {
			h->opener = tgid_of(fuse_get_context()->pid);
			rc = fs_import_begin(eng, t, &h->im);
			fi->direct_io = 1;
			fi->nonseekable = 0;
		}
		break;
	case FS_CSV:
		/* direct I/O: the bytes are made as they are read */
		fi->direct_io = 1;
		if (acc == O_RDONLY) {
			rc = fs_csv_open(eng, t, &h->crd);
			break;
		}
		h->opener = tgid_of(fuse_get_context()->pid);
		rc = fs_import_begin(eng, t, &h->im);
		if (!rc)
			rc = fs_import_use_csv(h->im);
		break;
	case FS_SCHEMA:
		fi->direct_io = 1;
		if (acc != O_RDONLY) {
			/* a whole new schema is written: from nothing with
			 * O_TRUNC, else over the current bytes (an in-place
			 * edit); sent at the opener's close */
			h->swrite = true;
			h->opener = tgid_of(fuse_get_context()->pid);
			if (fi->flags & O_TRUNC)
				break;
		}
		rc = fs_table_schema_json(eng, t, &h->buf, &h->len);
		break;
	case FS_STATUS:
		rc = fs_table_status_json(eng, t, &h->buf, &h->len);
		fi->direct_io = 1;
		break;
	case FS_REJECTS: {
		char *p = fs_table_rejects_path(eng, t);

		rc = p ? 0 : -ENOMEM;
		if (p) {
			h->fd = open(p, O_RDONLY | O_CLOEXEC);
			if (h->fd < 0 && errno != ENOENT)
				rc = -errno;
		}
		free(p);
		fi->direct_io = 1;
		break;
	}
	case FS_NONE:
		break;
	}
	if (rc) {
		handle_free(h);
		return rc;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	return 0;
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct fs_table *t;
	enum fs_file file;
	int rc = resolve(path, &t, &file);

	(void)mode;
	if (rc == -ENOENT) {
		char name[1024];

		if (pending_of(path, name, sizeof(name)) == 2)
			return open_pending(path, fi);
		return -EACCES; /* no new tables or files by creation */
	}
	if (rc)
		return rc;
	return fs_open(path, fi);
}

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

static int fs_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	size_t n = 0;
	ssize_t r;
	int rc;

	(void)path;
	if (off < 0)
		return -EINVAL;
	switch (h->file) {
	case FS_ROWS:
		if (!h->rd)
			return -EBADF;
		rc = fs_reader_read(h->rd, (uint64_t)off, buf, size, &n);
		return rc ? rc : (int)n;
	case FS_CSV:
		if (!h->crd)
			return -EBADF;
		rc = fs_csv_read(h->crd, (uint64_t)off, buf, size, &n);
		return rc ? rc : (int)n;
	case FS_SCHEMA:
	case FS_STATUS:
		if ((size_t)off >= h->len)
			return 0;
		n = h->len - (size_t)off < size ? h->len - (size_t)off : size;
		memcpy(buf, h->buf + off, n);
		return (int)n;
	case FS_REJECTS:
		if (h->fd < 0)
			return 0;
		r = pread(h->fd, buf, size, off);
		return r < 0 ? -errno : (int)r;
	case FS_NONE:
		break;
	}
	return -EISDIR;
}

/* schema.json: the bytes at their offsets, in memory (a schema is small). */
#define SCHEMA_MAX (1 << 20)
static int schema_write(struct handle *h, const char *buf, size_t size,
			off_t off)
{
	size_t end;

	if (off < 0 || (uint64_t)off + size > SCHEMA_MAX)
		return -EFBIG;
	end = (size_t)off + size;
	if (end > h->len) {
		char *p = realloc(h->buf, end);

		if (!p)
			return -ENOMEM;
		memset(p + h->len, 0, end - h->len);
		h->buf = p;
		h->len = end;
	}
	memcpy(h->buf + off, buf, size);
	h->sdirty = true;
	return (int)size;
}

/* Send a written schema.json: a schema change, or a new table. */
static int schema_send(struct handle *h)
{
	struct fs_engine *eng = engine();

	if (!h->sdirty)
		return h->sresult;
	h->sdirty = false;
	if (h->pending)
		h->sresult = fs_engine_create(eng, h->pending, h->buf, h->len,
					      NULL);
	else
		h->sresult = fs_table_put_schema(eng, h->t, h->buf, h->len);
	return h->sresult;
}

static int fs_write(const char *path, const char *buf, size_t size,
		    off_t off, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	int rc;

	(void)path;
	if (h->swrite)
		return schema_write(h, buf, size, off);
	(void)off; /* a stream of lines: offsets (O_APPEND or not) don't matter */
	if (!h->im)
		return -EBADF;
	rc = fs_import_write(h->im, buf, size);
	return rc ? rc : (int)size;
}

/*
 * close() of every descriptor lands here. Only the process that opened the
 * file uploads, when something was written: a shell's forked children
 * closing inherited descriptors must not send partial imports. The error is
 * what close() returns; once an import failed, every later close of the
 * opener fails with it too (fs_import_finish latches it).
 */
/*
 * An import rewrote rejects.jsonl: tell the kernel, or a stat in the next
 * attr_timeout still shows the previous import's size. rows is the path of
 * the table's rows.jsonl. A different inode from the one whose request is
 * being handled, so notifying from here cannot deadlock.
 */
static void rejects_changed(const char *rows)
{
	const char *slash = rows ? strrchr(rows, '/') : NULL;
	char p[PATH_MAX];
	int n;

	if (!slash)
		return;
	n = snprintf(p, sizeof(p), "%.*s/%s", (int)(slash - rows), rows,
		     file_names[FS_REJECTS]);
	if (n > 0 && (size_t)n < sizeof(p))
		fuse_invalidate_path(fuse_get_context()->fuse, p);
}

static int fs_flush(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	int rc;

	if (!h->im && !h->swrite)
		return 0;
	if (tgid_of(fuse_get_context()->pid) != h->opener)
		return 0;
	if (h->swrite)
		return schema_send(h);
	rc = fs_import_finish(h->im);
	rejects_changed(path);
	return rc;
}

/* Release's error is thrown away by the kernel: an import flush did not
 * finish (skipped, or a forked writer) is finished here and logged. */
static int fs_release(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	if (h->swrite && h->sdirty) {
		int rc = schema_send(h);

		if (rc)
			log_err("schema.json of '%s' sent at release: %s",
				h->pending ? h->pending : fs_table_name(h->t),
				strerror(-rc));
	}
	if (h->im && fs_import_dirty(h->im)) {
		int rc = fs_import_finish(h->im);

		if (rc)
			log_err("import into '%s' finished at release: %s",
				fs_table_name(h->t), strerror(-rc));
		rejects_changed(path);
	}
	handle_free(h);
	return 0;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct fs_table *t;
	enum fs_file file;
	int rc;

	if (fi && handle_of(fi)->swrite) {
		struct handle *h = handle_of(fi);

		if (size < 0 || size > SCHEMA_MAX)
			return -EFBIG;
		if ((size_t)size > h->len)
			return schema_write(h, "", 0, size) < 0 ? -ENOMEM : 0;
		h->len = (size_t)size;
		h->sdirty = true;
		return 0;
	}
	rc = resolve(path, &t, &file);
	if (rc)
		return rc;
	if ((file != FS_ROWS && file != FS_CSV) ||
	    fs_engine_config(engine())->ro)
		return file == FS_NONE ? -EISDIR : -EROFS;
	/* truncating rows.jsonl never deletes rows: imports are upserts */
	return size == 0 ? 0 : -EINVAL;
}

static int fs_utimens(const char *path, const struct timespec tv[2],
		      struct fuse_file_info *fi)
{
	struct fs_table *t;
	enum fs_file file;

	(void)tv;
	(void)fi;
	/* times are the mount's; accepting touch keeps scripts happy */
	return resolve(path, &t, &file);
}

/* The table name of "/NAME" (no deeper path). Returns 0, -EPERM. */
static int top_name(const char *path, char *name, size_t size)
{
	const char *p = path + 1;

	if (!*p || strchr(p, '/') || strlen(p) > NAME_MAX)
		return -EPERM;
	return fs_name_decode(p, name, size) ? -EINVAL : 0;
}

static int fs_mkdir(const char *path, mode_t mode)
{
	char name[1024];
	int rc = top_name(path, name, sizeof(name));

	(void)mode;
	return rc ? rc : fs_engine_mkdir(engine(), name);
}

static int fs_rmdir(const char *path)
{
	char name[1024];
	int rc = top_name(path, name, sizeof(name));

	return rc ? rc : fs_engine_rmdir(engine(), name);
}

const struct fuse_operations fs_ops = {
	.init = fs_init,
	.destroy = fs_destroy,
	.getattr = fs_getattr,
	.readdir = fs_readdir,
	.open = fs_open,
	.create = fs_create,
	.read = fs_read,
	.write = fs_write,
	.flush = fs_flush,
	.release = fs_release,
	.truncate = fs_truncate,
	.utimens = fs_utimens,
	.mkdir = fs_mkdir,
	.rmdir = fs_rmdir,
};
