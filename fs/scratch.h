/*
 * scratch: files a program creates in a table directory that are not one
 * of the table's files (sed's and perl's temporary files, rsync's
 * .rows.jsonl.XXXXXX, vim's 4913 probe and backup, a user's own notes).
 *
 * dtfs holds them for this mount only, spooled on disk (an unlinked file in
 * a directory of the cache, so a big one costs no memory), until they are
 * unlinked, renamed onto a table file (the face imports them: fs_import_fd)
 * or the mount ends. They never reach the API by themselves.
 *
 * A scratch file is named by (dir, name): dir is the key of the directory
 * it is in (the table's id), name its file name. Open handles hold a
 * reference: an unlinked or renamed-over scratch file stays readable and
 * writable through them, as a POSIX file would.
 *
 * Threads: every function may be called from many threads at once; data
 * goes through pread/pwrite on the file's descriptor, the names and
 * attributes under the set's lock.
 *
 * Errors: 0 or a negative errno.
 */
#ifndef DTFS_FS_SCRATCH_H
#define DTFS_FS_SCRATCH_H

#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#define FS_SCRATCH_WARN __attribute__((warn_unused_result))

struct fs_scratch_set;
struct fs_scratch;

/* A set whose data lives under `dir` (created, mode 0700). Returns 0,
 * -ENOMEM, or the error of creating dir. */
int fs_scratch_set_new(const char *dir, struct fs_scratch_set **out)
	FS_SCRATCH_WARN;
/* Free the set; every reference must have been put back. */
void fs_scratch_set_free(struct fs_scratch_set *set);

/* The scratch file dir/name, with a reference taken. Returns 0, -ENOENT. */
int fs_scratch_get(struct fs_scratch_set *set, const char *dir,
		   const char *name, struct fs_scratch **out) FS_SCRATCH_WARN;

/* Create dir/name (mode's permission bits kept), or take the existing one
 * unless excl. A reference is taken. Returns 0, -EEXIST, -ENOMEM, or the
 * error of creating its data file (-ENOSPC, -EIO, …). */
int fs_scratch_create(struct fs_scratch_set *set, const char *dir,
		      const char *name, mode_t mode, bool excl,
		      struct fs_scratch **out) FS_SCRATCH_WARN;

/* Drop a reference; the data goes with the last one once unlinked. */
void fs_scratch_put(struct fs_scratch *s);

/* Remove dir/name from the set (open handles keep the data). Returns 0,
 * -ENOENT. */
int fs_scratch_unlink(struct fs_scratch_set *set, const char *dir,
		      const char *name) FS_SCRATCH_WARN;

/* Remove s from the set if it is still linked under its name: what a
 * rename onto a table file does once the import took it. */
void fs_scratch_detach(struct fs_scratch *s);

/* Rename dir/from to dir/to, replacing a scratch file named to (unless
 * noreplace: -EEXIST). Returns 0, -ENOENT, -EEXIST, -ENOMEM. */
int fs_scratch_rename(struct fs_scratch_set *set, const char *dir,
		      const char *from, const char *to, bool noreplace)
	FS_SCRATCH_WARN;

/* The names in dir, one call of fill each (stop when it returns non-0). */
void fs_scratch_list(struct fs_scratch_set *set, const char *dir,
		     int (*fill)(void *arg, const char *name), void *arg);

/* The data's descriptor (borrowed: valid while the reference is held). */
int fs_scratch_fd(const struct fs_scratch *s);

/* Size, mode (S_IFREG | bits) and times. Returns 0 or fstat's error. */
int fs_scratch_stat(struct fs_scratch *s, struct stat *st) FS_SCRATCH_WARN;

/* Attributes a program sets on its temporary file before renaming it. */
void fs_scratch_chmod(struct fs_scratch *s, mode_t mode);
/* tv as utimensat takes it: UTIME_NOW and UTIME_OMIT honoured. */
void fs_scratch_utimens(struct fs_scratch *s, const struct timespec tv[2]);

#endif
