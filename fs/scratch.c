/*
 * scratch: files held by the mount for programs that write through
 * temporary files (scratch.h). A short list per set: programs keep one or
 * two such files per directory, for the seconds between create and rename.
 */
#include "scratch.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirs.h"
#include "log.h"

struct fs_scratch {
	struct fs_scratch_set *set;
	char *dir;
	char *name;
	int fd;
	mode_t mode;
	struct timespec atime, mtime, ctime;
	struct timespec data_mtime;	/* the data file's when mtime was set */
	unsigned refs;		/* handles, plus one while linked */
	bool linked;
	struct fs_scratch *next;
};

struct fs_scratch_set {
	pthread_mutex_t lock;
	char *dir;
	struct fs_scratch *head;	/* the linked ones */
};

int fs_scratch_set_new(const char *dir, struct fs_scratch_set **out)
{
	struct fs_scratch_set *set;

	int rc;

	*out = NULL;
	rc = dirs_make(dir);
	if (rc) {
		log_err("cannot create '%s': %s", dir, strerror(-rc));
		return rc;
	}
	set = calloc(1, sizeof(*set));
	if (!set)
		return -ENOMEM;
	set->dir = strdup(dir);
	if (!set->dir) {
		free(set);
		return -ENOMEM;
	}
	pthread_mutex_init(&set->lock, NULL);
	*out = set;
	return 0;
}

static void scratch_free(struct fs_scratch *s)
{
	if (s->fd >= 0)
		close(s->fd);
	free(s->dir);
	free(s->name);
	free(s);
}

void fs_scratch_set_free(struct fs_scratch_set *set)
{
	struct fs_scratch *s, *next;

	if (!set)
		return;
	for (s = set->head; s; s = next) {
		next = s->next;
		scratch_free(s);
	}
	pthread_mutex_destroy(&set->lock);
	free(set->dir);
	free(set);
}

/* set->lock held */
static struct fs_scratch **find(struct fs_scratch_set *set, const char *dir,
				const char *name)
{
	struct fs_scratch **pp;

	for (pp = &set->head; *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->dir, dir) && !strcmp((*pp)->name, name))
			return pp;
	return NULL;
}

/* set->lock held: take s off the list and drop the list's reference */
static void unlink_locked(struct fs_scratch **pp)
{
	struct fs_scratch *s = *pp;

	*pp = s->next;
	s->next = NULL;
	s->linked = false;
	if (--s->refs == 0)
		scratch_free(s);
}

int fs_scratch_get(struct fs_scratch_set *set, const char *dir,
		   const char *name, struct fs_scratch **out)
{
	struct fs_scratch **pp;

	pthread_mutex_lock(&set->lock);
	pp = find(set, dir, name);
	*out = pp ? *pp : NULL;
	if (pp)
		(*pp)->refs++;
	pthread_mutex_unlock(&set->lock);
	return pp ? 0 : -ENOENT;
}

/* An anonymous file in set->dir: O_TMPFILE, or a named one unlinked at
 * once where the file system lacks it. */
static int data_file(struct fs_scratch_set *set)
{
	size_t n = strlen(set->dir) + sizeof("/scratch.XXXXXX");
	char *tmpl;
	int fd;

	fd = open(set->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 && errno == ENOENT && dirs_make(set->dir) == 0) {
		/* a cleanup removed the directory while we ran */
		log_warn("'%s' was removed: made again", set->dir);
		fd = open(set->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	}
	if (fd >= 0)
		return fd;
	tmpl = malloc(n);
	if (!tmpl)
		return -ENOMEM;
	snprintf(tmpl, n, "%s/scratch.XXXXXX", set->dir);
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd < 0)
		fd = -errno;
	else
		unlink(tmpl);
	free(tmpl);
	return fd;
}

int fs_scratch_create(struct fs_scratch_set *set, const char *dir,
		      const char *name, mode_t mode, bool excl,
		      struct fs_scratch **out)
{
	struct fs_scratch **pp, *s = NULL;
	int rc;

	*out = NULL;
	pthread_mutex_lock(&set->lock);
	pp = find(set, dir, name);
	if (pp) {
		rc = excl ? -EEXIST : 0;
		if (!rc) {
			(*pp)->refs++;
			*out = *pp;
		}
		goto out;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		rc = -ENOMEM;
		goto out;
	}
	s->fd = -1;
	s->set = set;
	s->dir = strdup(dir);
	s->name = strdup(name);
	if (!s->dir || !s->name) {
		rc = -ENOMEM;
		goto out;
	}
	s->fd = data_file(set);
	if (s->fd < 0) {
		rc = s->fd;
		log_err("cannot hold the file '%s': %s", name, strerror(-rc));
		goto out;
	}
	s->mode = mode & 07777;
	clock_gettime(CLOCK_REALTIME, &s->mtime);
	s->atime = s->ctime = s->mtime;
	{
		struct stat fst;

		if (fstat(s->fd, &fst) == 0)
			s->data_mtime = fst.st_mtim;
	}
	s->refs = 2;	/* the list's and the caller's */
	s->linked = true;
	s->next = set->head;
	set->head = s;
	*out = s;
	s = NULL;
	rc = 0;
out:
	pthread_mutex_unlock(&set->lock);
	if (s)
		scratch_free(s);
	return rc;
}

void fs_scratch_put(struct fs_scratch *s)
{
	struct fs_scratch_set *set;

	if (!s)
		return;
	set = s->set;
	pthread_mutex_lock(&set->lock);
	if (--s->refs == 0)
		scratch_free(s);
	pthread_mutex_unlock(&set->lock);
}

int fs_scratch_unlink(struct fs_scratch_set *set, const char *dir,
		      const char *name)
{
	struct fs_scratch **pp;

	pthread_mutex_lock(&set->lock);
	pp = find(set, dir, name);
	if (pp)
		unlink_locked(pp);
	pthread_mutex_unlock(&set->lock);
	return pp ? 0 : -ENOENT;
}

void fs_scratch_detach(struct fs_scratch *s)
{
	struct fs_scratch_set *set = s->set;
	struct fs_scratch **pp;

	pthread_mutex_lock(&set->lock);
	for (pp = &set->head; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			unlink_locked(pp);
			break;
		}
	}
	pthread_mutex_unlock(&set->lock);
}

int fs_scratch_rename(struct fs_scratch_set *set, const char *dir,
		      const char *from, const char *to, bool noreplace)
{
	struct fs_scratch **pp, **over, *s;
	char *name;
	int rc = 0;

	name = strdup(to);
	if (!name)
		return -ENOMEM;
	pthread_mutex_lock(&set->lock);
	pp = find(set, dir, from);
	if (!pp) {
		rc = -ENOENT;
		goto out;
	}
	if (!strcmp(from, to))
		goto out;
	over = find(set, dir, to);
	if (over && noreplace) {
		rc = -EEXIST;
		goto out;
	}
	s = *pp;
	if (over)
		unlink_locked(over);
	free(s->name);
	s->name = name;
	name = NULL;
	clock_gettime(CLOCK_REALTIME, &s->ctime);
out:
	pthread_mutex_unlock(&set->lock);
	free(name);
	return rc;
}

void fs_scratch_list(struct fs_scratch_set *set, const char *dir,
		     int (*fill)(void *arg, const char *name), void *arg)
{
	struct fs_scratch *s;

	pthread_mutex_lock(&set->lock);
	for (s = set->head; s; s = s->next)
		if (!strcmp(s->dir, dir) && fill(arg, s->name))
			break;
	pthread_mutex_unlock(&set->lock);
}

int fs_scratch_fd(const struct fs_scratch *s)
{
	return s->fd;
}

int fs_scratch_stat(struct fs_scratch *s, struct stat *st)
{
	struct stat fst;

	if (fstat(s->fd, &fst))
		return -errno;
	pthread_mutex_lock(&s->set->lock);
	st->st_mode = S_IFREG | s->mode;
	st->st_nlink = s->linked ? 1 : 0;
	st->st_size = fst.st_size;
	st->st_blocks = fst.st_blocks;
	st->st_atim = s->atime;
	/* a write since mtime was set moves it: the data file knows when */
	st->st_mtim = fst.st_mtim.tv_sec != s->data_mtime.tv_sec ||
			      fst.st_mtim.tv_nsec != s->data_mtime.tv_nsec
			  ? fst.st_mtim
			  : s->mtime;
	st->st_ctim = s->ctime;
	pthread_mutex_unlock(&s->set->lock);
	return 0;
}

void fs_scratch_chmod(struct fs_scratch *s, mode_t mode)
{
	pthread_mutex_lock(&s->set->lock);
	s->mode = mode & 07777;
	clock_gettime(CLOCK_REALTIME, &s->ctime);
	pthread_mutex_unlock(&s->set->lock);
}

void fs_scratch_utimens(struct fs_scratch *s, const struct timespec tv[2])
{
	struct timespec now;
	struct stat fst;

	clock_gettime(CLOCK_REALTIME, &now);
	pthread_mutex_lock(&s->set->lock);
	if (fstat(s->fd, &fst) == 0)
		s->data_mtime = fst.st_mtim;
	if (!tv) {
		s->atime = s->mtime = now;
	} else {
		if (tv[0].tv_nsec == UTIME_NOW)
			s->atime = now;
		else if (tv[0].tv_nsec != UTIME_OMIT)
			s->atime = tv[0];
		if (tv[1].tv_nsec == UTIME_NOW)
			s->mtime = now;
		else if (tv[1].tv_nsec != UTIME_OMIT)
			s->mtime = tv[1];
	}
	s->ctime = now;
	pthread_mutex_unlock(&s->set->lock);
}
