/*
 * ops: the fuse_operations of dtfs. Paths are "/", "/TABLE" and
 * "/TABLE/FILE" with FILE one of schema.json, rows.jsonl, rejects.jsonl,
 * status.json, rows.csv, or any other name: a scratch file (scratch.h)
 * that programs writing through temporary files create, and rename onto
 * rows.jsonl (or rows.csv, schema.json) to import it. TABLE is a file
 * name as names.h encodes it.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
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
#include "scratch.h"

enum fs_file {
	FS_NONE,	/* "/" or a table directory */
	FS_SCHEMA,
	FS_ROWS,
	FS_REJECTS,
	FS_STATUS,
	FS_CSV,		/* rows.csv: rows.jsonl as CSV (csvview.c) */
	FS_SCRATCH,	/* any other name in a table directory */
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
	struct fs_scratch *sc;	/* a scratch file */
	bool append;		/* O_APPEND: each write() is imported */
	bool page_cached;	/* counted in face->cached_handles */
	struct handle *prev, *next; /* live handles; handles_lock */
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
static struct fs_scratch_set *scratch;

/*
 * Every handle not released yet. The kernel sends RELEASE after close()
 * has returned, and an unmount drops the RELEASEs still queued: fs_destroy
 * releases what is left, so nothing leaks and no written bytes are lost.
 */
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle *handles;

static struct handle *handle_new(void)
{
	struct handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->fd = -1;
	pthread_mutex_lock(&handles_lock);
	h->next = handles;
	if (handles)
		handles->prev = h;
	handles = h;
	pthread_mutex_unlock(&handles_lock);
	return h;
}

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
	if (!slash[1] || strchr(slash + 1, '/'))
		return -ENOENT;
	*file = FS_SCRATCH;
	return 0;
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

/* The file name of a path that resolve() found to be a scratch file. */
static const char *base_name(const char *path)
{
	return strrchr(path, '/') + 1;
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

/*
 * mv from another file system onto rows.jsonl, tar extracting a backup of
 * it and install(1) putting a file there: GNU mv, tar and install remove
 * the target first, then create it with O_EXCL and copy. So they (and
 * only they: rm of rows.jsonl is EPERM, it would delete nothing) may
 * unlink rows.jsonl: the name then vanishes for that process alone, for
 * MV_WINDOW seconds or until it creates the file, which imports as any
 * write from the start does. Other processes see rows.jsonl all along.
 */
#define MV_WINDOW 10
#define MV_SLOTS 8
static struct {
	const struct fs_table *t;
	pid_t tgid;
	time_t at;
} moving[MV_SLOTS];
static pthread_mutex_t moving_lock = PTHREAD_MUTEX_INITIALIZER;

static bool caller_replaces_by_unlink(pid_t tgid)
{
	char path[64], comm[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)tgid);
	f = fopen(path, "re");
	if (!f)
		return false;
	if (!fgets(comm, sizeof(comm), f))
		comm[0] = '\0';
	fclose(f);
	return !strcmp(comm, "mv\n") || !strcmp(comm, "tar\n") ||
	       !strcmp(comm, "install\n");
}

static bool moving_onto_rows(const struct fs_table *t)
{
	pid_t tgid = tgid_of(fuse_get_context()->pid);
	time_t now = time(NULL);
	int i, slot = 0;

	if (fs_engine_config(engine())->ro || !caller_replaces_by_unlink(tgid))
		return false;
	pthread_mutex_lock(&moving_lock);
	for (i = 0; i < MV_SLOTS; i++)
		if (now - moving[i].at > now - moving[slot].at)
			slot = i;	/* the oldest */
	moving[slot].t = t;
	moving[slot].tgid = tgid;
	moving[slot].at = now;
	pthread_mutex_unlock(&moving_lock);
	return true;
}

/* Whether rows.jsonl of t is gone for the caller (mv removed it); clear
 * says the caller is creating it again. */
static bool moved_away(const struct fs_table *t, bool clear)
{
	time_t now = time(NULL);
	pid_t tgid = 0;
	bool gone = false;
	int i;

	pthread_mutex_lock(&moving_lock);
	for (i = 0; i < MV_SLOTS; i++) {
		if (moving[i].t != t || now - moving[i].at > MV_WINDOW)
			continue;
		if (!tgid)
			tgid = tgid_of(fuse_get_context()->pid);
		if (moving[i].tgid != tgid)
			continue;
		gone = true;
		if (clear)
			moving[i].t = NULL;
	}
	pthread_mutex_unlock(&moving_lock);
	return gone;
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
	/* renaming onto an open rows.jsonl must reach fs_rename, not become
	 * a rename of rows.jsonl to .fuse_hidden… (perl -i reads it open) */
	cfg->hard_remove = 1;
	/* a reader killed or interrupted while its page is fetched gets
	 * EINTR at once, not after the retry budget */
	api_set_interrupt_check(fuse_interrupted);
	mount_time = time(NULL);
	{
		const char *cache = fs_engine_config(engine())->cache_dir;
		size_t n = strlen(cache) + sizeof("/scratch");
		char *dir = malloc(n);

		/* without it, creating a file fails (EIO), nothing else */
		if (dir) {
			snprintf(dir, n, "%s/scratch", cache);
			if (fs_scratch_set_new(dir, &scratch))
				scratch = NULL;
		}
		free(dir);
	}
	return fuse_get_context()->private_data;
}

static void handle_finish(struct handle *h, const char *path);
static void handle_free(struct handle *h);

static void fs_destroy(void *data)
{
	struct handle *h;

	(void)data;
	/* RELEASEs the unmount dropped: finish and free those handles */
	for (;;) {
		pthread_mutex_lock(&handles_lock);
		h = handles;
		pthread_mutex_unlock(&handles_lock);
		if (!h)
			break;
		handle_finish(h, NULL);
		handle_free(h);
	}
	fs_scratch_set_free(scratch);
	scratch = NULL;
}

/* rows.jsonl and rows.csv change time with their version. */
static void rows_times(struct fs_engine *eng, struct fs_table *t,
		       struct stat *st)
{
	int64_t at = fs_table_rows_mtime(eng, t);

	if (at > 0)
		st->st_atime = st->st_mtime = st->st_ctime = (time_t)at;
}

/* getattr; sizes false: no size that costs a fetch or a conversion (the
 * mode is all a caller wants) */
static int attrs(const char *path, struct stat *st, struct fuse_file_info *fi,
		 bool sizes)
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
		/* a table directory takes scratch files (not when ro); the
		 * root takes new tables (mkdir, flows) */
		{
			bool w = t ? !ro : fs_engine_can_create(eng);

			st->st_mode = S_IFDIR | ((w ? 0755 : 0555) &
						 ~fs_face_opts.umask);
		}
		st->st_nlink = 2;
		return 0;
	case FS_ROWS: {
		struct fs_face_gens *face = fs_table_face(t);
		struct handle *wh = fi ? (struct handle *)(uintptr_t)fi->fh
				       : NULL;
		uint64_t size;

		if (!fi && moved_away(t, false))
			return -ENOENT;
		st->st_mode = S_IFREG | (ro ? 0444 : 0644);
		/* exact, so tar and rsync copy every byte (size.c); a writer's
		 * fstat does not fetch */
		if ((wh && wh->im) || !sizes) {
			size = fs_table_rows_size(eng, t, &gen);
		} else if (fs_table_rows_exact_size(eng, t, &size, &gen)) {
			/* the API cannot give it now: 0, with direct I/O for
			 * readers, whose open or read then meets the error */
			size = 0;
			gen = 0;
		}
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
		rows_times(eng, t, st);
		break;
	}
	case FS_CSV: {
		struct handle *wh = fi ? (struct handle *)(uintptr_t)fi->fh
				       : NULL;
		uint64_t size;

		st->st_mode = S_IFREG | (ro ? 0444 : 0644);
		/* exact, as rows.jsonl's; a writer's fstat does not fetch.
		 * When the API cannot give it: 0, and the read (direct I/O)
		 * meets the error */
		if ((wh && wh->im) || !sizes)
			size = fs_table_csv_size(eng, t);
		else if (fs_table_csv_exact_size(eng, t, &size))
			size = 0;
		st->st_size = (off_t)size;
		rows_times(eng, t, st);
		break;
	}
	case FS_SCHEMA:
		st->st_mode = S_IFREG | (ro ? 0444 : 0644);
		st->st_size = (off_t)fs_table_schema_size(eng, t);
		if (!st->st_size) {	/* not cached yet: fetch it */
			char *json = NULL;
			size_t len = 0;

			rc = fs_table_schema_json(eng, t, &json, &len);
			free(json);
			if (rc)
				return rc;
			st->st_size = (off_t)len;
		}
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
	case FS_STATUS: {
		char *json = NULL;
		size_t len = 0;

		st->st_mode = S_IFREG | 0444;
		/* the exact size, as of now: status.json is small */
		if (!fs_table_status_json(eng, t, &json, &len))
			st->st_size = (off_t)len;
		free(json);
		break;
	}
	case FS_SCRATCH: {
		struct fs_scratch *sc = NULL;

		rc = scratch ? fs_scratch_get(scratch, fs_table_id(t),
					      base_name(path), &sc)
			     : -ENOENT;
		if (!rc) {
			rc = fs_scratch_stat(sc, st);
			fs_scratch_put(sc);
		}
		if (rc)
			return rc;
		st->st_uid = getuid();
		st->st_gid = getgid();
		return 0;
	}
	}
	st->st_mode &= ~fs_face_opts.umask;
	st->st_nlink = 1;
	(void)fi;
	return 0;
}

static int fs_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	return attrs(path, st, fi, true);
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

struct fill_ctx {
	void *buf;
	fuse_fill_dir_t fill;
};

static int fill_scratch(void *arg, const char *name)
{
	struct fill_ctx *c = arg;
	struct stat st = { .st_mode = S_IFREG };

	return c->fill(c->buf, name, &st, 0, 0);
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
		struct fill_ctx c = { buf, fill };
		/* the type, so find -type f and ls --color need no stat */
		struct stat st = { .st_mode = S_IFREG };

		for (i = FS_SCHEMA; i <= FS_CSV; i++)
			fill(buf, file_names[i], &st, 0, 0);
		if (scratch)
			fs_scratch_list(scratch, fs_table_id(t), fill_scratch,
					&c);
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
	pthread_mutex_lock(&handles_lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		handles = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&handles_lock);
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
	fs_scratch_put(h->sc);
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
	h = handle_new();
	if (!h)
		return -ENOMEM;
	h->file = FS_SCHEMA;
	h->fd = -1;
	h->pending = strdup(name);
	if (!h->pending) {
		handle_free(h);
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
	if (acc != O_RDONLY && file != FS_ROWS && file != FS_SCRATCH &&
	    file != FS_CSV && file != FS_SCHEMA)
		return -EROFS;
	if (acc != O_RDONLY && fs_engine_config(eng)->ro)
		return -EROFS;
	h = handle_new();
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
			h->append = fi->flags & O_APPEND;
			rc = fs_import_begin(eng, t, &h->im);
			/* a whole file written from the start: with
			 * -o replace, the table becomes equal to it */
			if (!rc && (fi->flags & O_TRUNC))
				fs_import_set_replace(
					h->im, fs_engine_config(eng)->replace);
			fi->direct_io = 1;
			fi->nonseekable = 0;
		}
		break;
	case FS_SCRATCH:
		rc = scratch ? fs_scratch_get(scratch, fs_table_id(t),
					      base_name(path), &h->sc)
			     : -ENOENT;
		if (!rc && (fi->flags & O_TRUNC) && acc != O_RDONLY &&
		    ftruncate(fs_scratch_fd(h->sc), 0))
			rc = -errno;
		h->append = fi->flags & O_APPEND;
		fi->direct_io = 1;
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
	struct fs_scratch *sc = NULL;
	struct fs_table *t;
	enum fs_file file;
	int rc = resolve(path, &t, &file);

	if (rc == -ENOENT) {
		char name[1024];

		/* a pending table's schema.json; no new tables by creating
		 * a file */
		if (pending_of(path, name, sizeof(name)) == 2)
			return open_pending(path, fi);
		return -EPERM;
	}
	if (rc)
		return rc;
	if (file == FS_SCRATCH) {
		/* another file in a table directory: held by the mount */
		if (fs_engine_config(engine())->ro)
			return -EROFS;
		if (!scratch)
			return -EIO;
		rc = fs_scratch_create(scratch, fs_table_id(t),
				       base_name(path), mode,
				       fi->flags & O_EXCL, &sc);
		if (rc)
			return rc;
		rc = fs_open(path, fi);
		fs_scratch_put(sc);
		return rc;
	}
	if (file == FS_NONE)
		return -EPERM;
	/* mv creating the rows.jsonl it removed: the whole file follows */
	if (file == FS_ROWS && moved_away(t, true))
		fi->flags |= O_TRUNC;
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
	case FS_SCRATCH:
		r = pread(fs_scratch_fd(h->sc), buf, size, off);
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
	if (h->sc) {
		int fd = fs_scratch_fd(h->sc);
		struct stat st;
		ssize_t w;

		if (h->append && fstat(fd, &st) == 0)
			off = st.st_size;
		w = pwrite(fd, buf, size, off);
		return w < 0 ? -errno : (int)w;
	}
	/* a stream of lines: offsets (O_APPEND or not) don't matter */
	if (!h->im)
		return -EBADF;
	rc = fs_import_write(h->im, buf, size);
	/* `>>`: the shell ignores close(), so the lines are imported now
	 * and write() says whether they landed */
	if (!rc && h->append)
		rc = fs_import_commit(h->im);
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

/*
 * How the thread tid that sent a FLUSH is ending, into how ("" for an
 * explicit close()). A process that exits or is killed flushes its open
 * files from do_exit, after PF_EXITING (0x4, field 9 of /proc/<tid>/stat)
 * and its exit code (field 52) are set; the thread is blocked in the
 * flush, so its /proc entry is still there.
 */
static void writer_end(pid_t tid, char *how, size_t size)
{
	char path[64], line[1024], *p, *end;
	unsigned long flags = 0;
	long code = 0;
	FILE *f;
	int field;

	how[0] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return;
	p = fgets(line, sizeof(line), f) ? strrchr(line, ')') : NULL;
	fclose(f);
	if (!p)
		return;
	/* fields from 3 on follow the ") " that ends the command name */
	for (field = 3, p += 2; *p && field <= 52; field++) {
		if (field == 9)
			flags = strtoul(p, &end, 10);
		else if (field == 52)
			code = strtol(p, &end, 10);
		else
			end = strchr(p, ' ');
		if (!end)
			break;
		p = end;
		while (*p == ' ')
			p++;
	}
	if (!(flags & 0x4))
		return;
	if (code & 0x7f)
		snprintf(how, size, "killed by signal %ld", code & 0x7f);
	else
		snprintf(how, size, "exited without close");
}

static int fs_flush(const char *path, struct fuse_file_info *fi)
{
	char how[48];
	struct handle *h = handle_of(fi);
	int rc;

	if (!h->im && !h->swrite)
		return 0;
	if (tgid_of(fuse_get_context()->pid) != h->opener)
		return 0;
	if (h->swrite)
		return schema_send(h);
	writer_end(fuse_get_context()->pid, how, sizeof(how));
	/* a writer that wrote nothing (touch, a failed fallocate) imports
	 * nothing: how it ended is no news */
	if (how[0] && fs_import_dirty(h->im))
		log_warn("import into '%s': the writer %s (its complete lines "
			 "are imported)", fs_table_name(h->t), how);
	fs_import_set_writer(h->im, how);
	rc = fs_import_finish(h->im);
	rejects_changed(path);
	return rc;
}

/* Release's error is thrown away by the kernel: an import flush did not
 * finish (skipped, or a forked writer) is finished here and logged. */
/* What a release does before freeing: send what was written since the
 * opener's flush. path is NULL at unmount (nothing to tell the kernel). */
static void handle_finish(struct handle *h, const char *path)
{
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
		if (path)
			rejects_changed(path);
	}
}

static int fs_release(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	handle_finish(h, path);
	handle_free(h);
	return 0;
}

/*
 * Resolve a path to a scratch file, with a reference (put it back).
 * Returns 0, -ENOENT, or 1 when the path is a table's own file or a
 * directory (*file says which).
 */
static int scratch_of(const char *path, struct fs_table **t,
		      enum fs_file *file, struct fs_scratch **sc)
{
	int rc = resolve(path, t, file);

	*sc = NULL;
	if (rc)
		return rc;
	if (*file != FS_SCRATCH)
		return 1;
	if (!scratch)
		return -ENOENT;
	return fs_scratch_get(scratch, fs_table_id(*t), base_name(path), sc);
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct handle *h = fi ? handle_of(fi) : NULL;
	struct fs_scratch *sc;
	struct fs_table *t;
	enum fs_file file;
	int rc;

	if (size < 0)
		return -EINVAL;
	if (h && h->swrite) {
		/* schema.json being written: its bytes */
		if (size > SCHEMA_MAX)
			return -EFBIG;
		if ((size_t)size > h->len)
			return schema_write(h, "", 0, size) < 0 ? -ENOMEM : 0;
		h->len = (size_t)size;
		h->sdirty = true;
		return 0;
	}
	if (h && h->sc)
		return ftruncate(fs_scratch_fd(h->sc), size) ? -errno : 0;
	/* rsync --inplace ends with ftruncate(fd, bytes written): the
	 * stream is what it is, and it was the whole file */
	if (h && h->im) {
		if (fs_engine_config(engine())->replace)
			fs_import_set_replace(h->im, true);
		return 0;
	}
	rc = scratch_of(path, &t, &file, &sc);
	if (rc < 0)
		return rc;
	if (rc == 0) {
		rc = ftruncate(fs_scratch_fd(sc), size) ? -errno : 0;
		fs_scratch_put(sc);
		return rc;
	}
	if ((file != FS_ROWS && file != FS_CSV) ||
	    fs_engine_config(engine())->ro)
		return file == FS_NONE ? -EISDIR : -EROFS;
	/* truncating rows.jsonl never deletes rows: imports are upserts */
	return size == 0 ? 0 : -EINVAL;
}

static int fs_utimens(const char *path, const struct timespec tv[2],
		      struct fuse_file_info *fi)
{
	struct fs_scratch *sc;
	struct fs_table *t;
	enum fs_file file;
	int rc;

	rc = scratch_of(path, &t, &file, &sc);
	if (rc < 0)
		return rc;
	if (rc == 0) {
		fs_scratch_utimens(sc, tv);
		fs_scratch_put(sc);
	}
	(void)fi;
	/* a table's times are its rows' version's (or the mount's):
	 * accepting touch keeps scripts happy */
	return 0;
}

/* Whether the caller's process has t's `file` open for writing (an
 * fchmod reaches us without its descriptor). */
static bool writing(const struct fs_table *t, enum fs_file file)
{
	pid_t tgid = tgid_of(fuse_get_context()->pid);
	bool found = false;

	pthread_mutex_lock(&handles_lock);
	for (const struct handle *h = handles; h && !found; h = h->next)
		found = h->t == t && h->file == file && h->im &&
			h->opener == tgid;
	pthread_mutex_unlock(&handles_lock);
	return found;
}

/* chmod: a scratch file takes any mode; a table's files keep theirs
 * (setting the mode they have is fine: cp -p, rsync -a, mv do it), and a
 * tool writing one sets what it likes on its descriptor (install(1) makes
 * the file 0600 while it copies): the import is what counts. */
static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct fs_scratch *sc;
	struct stat st;
	struct fs_table *t;
	enum fs_file file;
	int rc;

	rc = scratch_of(path, &t, &file, &sc);
	if (rc < 0)
		return rc;
	if (rc == 0) {
		fs_scratch_chmod(sc, mode);
		fs_scratch_put(sc);
		return 0;
	}
	if (writing(t, file))
		return 0;
	rc = attrs(path, &st, fi, false);
	if (rc)
		return rc;
	return (mode & 07777) == (st.st_mode & 07777) ? 0 : -EPERM;
}

/* chown: everything belongs to the mounting user; giving it to them is
 * fine, to anyone else EPERM. */
static int fs_chown(const char *path, uid_t uid, gid_t gid,
		    struct fuse_file_info *fi)
{
	struct fs_scratch *sc;
	struct fs_table *t;
	enum fs_file file;
	int rc;

	(void)fi;
	rc = scratch_of(path, &t, &file, &sc);
	if (rc < 0)
		return rc;
	fs_scratch_put(sc);
	if ((uid != (uid_t)-1 && uid != getuid()) ||
	    (gid != (gid_t)-1 && gid != getgid()))
		return -EPERM;
	return 0;
}

/* rm: scratch files go; a table's files and directories cannot. */
static int fs_unlink(const char *path)
{
	struct fs_table *t;
	enum fs_file file;
	int rc;

	rc = resolve(path, &t, &file);
	if (rc)
		return rc;
	if (file == FS_NONE)
		return -EISDIR;
	if (file == FS_ROWS && moving_onto_rows(t))
		return 0;
	if (file != FS_SCRATCH)
		return -EPERM;
	if (!scratch)
		return -ENOENT;
	return fs_scratch_unlink(scratch, fs_table_id(t), base_name(path));
}

/*
 * rename: a scratch file to another name in its table directory, or onto
 * rows.jsonl, which imports it (what sed -i, perl -i, rsync and editors
 * that save through a temporary file do); the rename fails with the
 * import's error, leaving the scratch file where it was. A table's own
 * files and directories are not renamed (EPERM), nor do files move
 * between tables (EXDEV: mv copies then).
 */
static int fs_rename(const char *from, const char *to, unsigned int flags)
{
	struct fs_engine *eng = engine();
	struct fs_table *t, *t2;
	enum fs_file file, file2;
	struct fs_scratch *sc = NULL;
	int rc;

	rc = resolve(from, &t, &file);
	if (rc)
		return rc;
	if (file != FS_SCRATCH)
		return -EPERM;
	rc = resolve(to, &t2, &file2);
	if (rc == -ENOENT)
		return -EPERM;	/* a new table or a path in none */
	if (rc)
		return rc;
	if (file2 == FS_NONE)
		return -EISDIR;
	if (t2 != t)
		return -EXDEV;
	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	if (!scratch)
		return -ENOENT;
	if (file2 == FS_SCRATCH)
		return fs_scratch_rename(scratch, fs_table_id(t),
					 base_name(from), base_name(to),
					 flags & RENAME_NOREPLACE);
	if (file2 != FS_ROWS && file2 != FS_CSV && file2 != FS_SCHEMA)
		return fs_engine_config(eng)->ro ? -EROFS : -EPERM;
	if (flags & RENAME_NOREPLACE)
		return -EEXIST;
	if (fs_engine_config(eng)->ro)
		return -EROFS;
	rc = fs_scratch_get(scratch, fs_table_id(t), base_name(from), &sc);
	if (rc)
		return rc;
	if (file2 == FS_SCHEMA) {
		/* an editor's save through a temporary file: a new schema */
		char *json = NULL;
		size_t len;

		rc = fs_schema_read_fd(fs_scratch_fd(sc), &json, &len);
		if (!rc)
			rc = fs_table_put_schema(eng, t, json, len);
		free(json);
	} else {
		rc = fs_import_fd(eng, t, fs_scratch_fd(sc),
				  fs_engine_config(eng)->replace,
				  file2 == FS_CSV);
	}
	if (rc)
		log_err("rename of '%s' onto '%s' failed: %s", base_name(from),
			to + 1, strerror(-rc));
	else
		fs_scratch_detach(sc);
	fs_scratch_put(sc);
	return rc;
}

/* Data is never held back: a scratch file's is in its file, an import's
 * goes at close (or at each write() with O_APPEND). */
static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	(void)datasync;
	(void)fi;
	return 0;
}

/* select() and poll() of a file: ready, as a regular file always is. Here
 * and not left to libfuse, whose default for a missing poll leaks the
 * poll handle (pv polls its input). */
static int fs_poll(const char *path, struct fuse_file_info *fi,
		   struct fuse_pollhandle *ph, unsigned *reventsp)
{
	(void)path;
	(void)fi;
	if (ph)
		fuse_pollhandle_destroy(ph);
	*reventsp |= POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM;
	return 0;
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

/* Links, symlinks and special files have no place in a table: EPERM,
 * which says so (without these, libfuse answers ENOSYS, "Function not
 * implemented", which reads as a broken mount). */
static int fs_symlink(const char *target, const char *path)
{
	(void)target;
	(void)path;
	return -EPERM;
}

static int fs_link(const char *from, const char *to)
{
	(void)from;
	(void)to;
	return -EPERM;
}

static int fs_mknod(const char *path, mode_t mode, dev_t rdev)
{
	(void)path;
	(void)mode;
	(void)rdev;
	return -EPERM;
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
	.chmod = fs_chmod,
	.chown = fs_chown,
	.unlink = fs_unlink,
	.symlink = fs_symlink,
	.link = fs_link,
	.mknod = fs_mknod,
	.rename = fs_rename,
	.fsync = fs_fsync,
	.poll = fs_poll,
};
