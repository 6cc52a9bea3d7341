/*
 * budget.c: our own request budget, optionally shared between processes.
 *
 * The production API sends no rate-limit headers: a client learns of its
 * budget only through 429s. So we keep one ourselves: at most n requests in
 * any window of w seconds. The state is a ring of the start times (the
 * "slots") of the last n requests: a new request may start at the oldest
 * slot + w, so slots n apart are always at least w apart and no window of
 * w seconds ever holds more than n. Slots are also kept non-decreasing, so
 * requests go out in the order they reserved. A small margin (1% of the
 * window, 0.05 to 1 s) absorbs the time between a slot and the request
 * actually leaving (a token fetch, the network).
 *
 * Sharing: with a budget file the ring lives in a small file mapped shared
 * by every process that names it (one per client id under the cache
 * directory), guarded by an open-file-description lock (F_OFD_SETLKW): it
 * is released when the holder's descriptor closes, so a process killed at
 * any point leaves no lock behind, and the ring holds nothing a dead
 * process owned (its slots simply age out). Two struct api in one process
 * exclude each other too (each opens the file). Times are CLOCK_MONOTONIC
 * seconds, which every process on a host shares; the boot id in the file
 * tells a ring from an earlier boot, which is then started afresh.
 *
 * Processes with different budgets (rate=) share one ring: it keeps the
 * last API_BUDGET_SLOTS starts of all of them, and each process measures
 * that traffic against its own budget (its n-th latest slot). So the
 * stricter one sends only while everyone's traffic is under its budget,
 * and together they never pass the looser one. (A ring per budget, reset
 * whenever a process with another budget reserved, let each reset the
 * other's count: together they passed both.)
 *
 * A 429's Retry-After is stored the same way (pause_until): every thread of
 * every process sharing the file waits it out.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_i.h"
#include "log.h"

#define BUDGET_MAGIC 0x62667464u /* "dtfb" */
#define BUDGET_VERSION 2u	/* 2: one ring for every budget */
#define BUDGET_LONG_AGO (-1e12)

struct budget_state {
	uint32_t magic, version;
	char boot_id[40];
	uint32_t head, pad; /* slot[head] is the oldest, the next written */
	double pause_until;
	double last; /* the latest slot handed out */
	double slot[API_BUDGET_SLOTS];
};

struct api_budget {
	pthread_mutex_t mu; /* the threads of this struct api */
	struct budget_state *st;
	int fd; /* -1: process-local */
	char *path;
	unsigned n;
	double window, margin;
	char boot_id[40];
};

static void read_boot_id(char out[40])
{
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t r = -1;

	memset(out, 0, 40);
	if (fd >= 0) {
		r = read(fd, out, 39);
		close(fd);
	}
	if (r <= 0)
		snprintf(out, 40, "unknown");
	out[39] = '\0';
	out[strcspn(out, "\n")] = '\0';
}

static int file_lock(struct api_budget *b, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET};

	if (b->fd < 0)
		return 0;
	while (fcntl(b->fd, F_OFD_SETLKW, &fl) < 0) {
		if (errno != EINTR) {
			int rc = -errno;

			log_err("lock budget file '%s' failed: %s", b->path,
				strerror(-rc));
			return rc;
		}
	}
	return 0;
}

/* Start the ring afresh when it is not one (new file, other boot, other
 * format). Under both locks. */
static void state_check(struct api_budget *b)
{
	struct budget_state *st = b->st;

	if (st->magic == BUDGET_MAGIC && st->version == BUDGET_VERSION &&
	    !memcmp(st->boot_id, b->boot_id, sizeof(st->boot_id)) &&
	    st->head < API_BUDGET_SLOTS)
		return;
	if (st->magic == BUDGET_MAGIC && b->fd >= 0)
		log_info("budget file '%s': starting a new ring", b->path);
	memset(st, 0, sizeof(*st));
	st->magic = BUDGET_MAGIC;
	st->version = BUDGET_VERSION;
	memcpy(st->boot_id, b->boot_id, sizeof(st->boot_id));
	st->head = 0;
	st->last = BUDGET_LONG_AGO;
	for (unsigned i = 0; i < API_BUDGET_SLOTS; i++)
		st->slot[i] = BUDGET_LONG_AGO;
}

/* Map the shared ring. Returns 0, 1 (no locks there: use a private
 * ring), or a negative errno (logged). */
static int budget_map(struct api_budget *b, const char *file)
{
	struct stat st;
	int rc;

	b->path = strdup(file);
	if (!b->path)
		return -ENOMEM;
	b->fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (b->fd < 0) {
		rc = -errno;
		log_err("open budget file '%s' failed: %s", file,
			strerror(-rc));
		return rc;
	}
	if (fstat(b->fd, &st) < 0) {
		rc = -errno;
		log_err("stat budget file '%s' failed: %s", file,
			strerror(-rc));
		return rc;
	}
	if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
		log_err("budget file '%s' refused: not a regular file of "
			"this user",
			file);
		return -EACCES;
	}
	if ((st.st_mode & 077) && fchmod(b->fd, 0600) < 0) {
		rc = -errno;
		log_err("chmod budget file '%s' failed: %s", file,
			strerror(-rc));
		return rc;
	}
	/* grow it under the lock before anyone maps it: a mapping past the
	 * end of a file faults, and so does one over a hole on a full disk
	 * (allocated, not only sized) */
	rc = file_lock(b, F_WRLCK);
	if (rc == -ENOLCK || rc == -EINVAL || rc == -EOPNOTSUPP) {
		/* a file system without such locks (some network ones):
		 * better this process's own budget than no mount */
		log_warn("budget file '%s': no locks here, so the budget is "
			 "not shared with other processes",
			 file);
		close(b->fd);
		b->fd = -1;
		return 1;
	}
	if (rc)
		return rc;
	rc = -posix_fallocate(b->fd, 0, (off_t)sizeof(struct budget_state));
	if ((rc == -EOPNOTSUPP || rc == -EINVAL) && fstat(b->fd, &st) == 0)
		rc = (size_t)st.st_size < sizeof(struct budget_state) &&
		     ftruncate(b->fd, (off_t)sizeof(struct budget_state)) < 0 ?
		     -errno : 0;
	if (rc == -ENOSPC || rc == -EDQUOT) {
		/* a full disk: as without locks, our own budget */
		log_warn("budget file '%s': %s, so the budget is not shared "
			 "with other processes", file, strerror(-rc));
		file_lock(b, F_UNLCK);
		close(b->fd);
		b->fd = -1;
		return 1;
	}
	if (rc) {
		log_err("size budget file '%s' failed: %s", file,
			strerror(-rc));
		file_lock(b, F_UNLCK);
		return rc;
	}
	b->st = mmap(NULL, sizeof(struct budget_state), PROT_READ | PROT_WRITE,
		     MAP_SHARED, b->fd, 0);
	if (b->st == MAP_FAILED) {
		rc = -errno;
		b->st = NULL;
		log_err("map budget file '%s' failed: %s", file, strerror(-rc));
		file_lock(b, F_UNLCK);
		return rc;
	}
	state_check(b);
	return file_lock(b, F_UNLCK);
}

int budget_new(unsigned n, double window_s, const char *file,
	       struct api_budget **out)
{
	struct api_budget *b;
	int rc;

	*out = NULL;
	if (!n || !(window_s > 0))
		return 0; /* no budget */
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	pthread_mutex_init(&b->mu, NULL);
	b->fd = -1;
	if (n > API_BUDGET_SLOTS) {
		/* fewer per window never exceeds the budget */
		log_info("request budget %u per %.3g s: tracking at most %d "
			 "per window",
			 n, window_s, API_BUDGET_SLOTS);
		n = API_BUDGET_SLOTS;
	}
	b->n = n;
	b->window = window_s;
	b->margin = window_s * 0.01;
	if (b->margin < 0.05)
		b->margin = 0.05;
	if (b->margin > 1.0)
		b->margin = 1.0;
	read_boot_id(b->boot_id);
	rc = file && *file ? budget_map(b, file) : 1;
	if (rc == 1) { /* process-local */
		b->st = calloc(1, sizeof(*b->st));
		rc = b->st ? 0 : -ENOMEM;
		if (!rc)
			state_check(b);
	}
	if (rc) {
		budget_free(b);
		return rc;
	}
	*out = b;
	return 0;
}

void budget_free(struct api_budget *b)
{
	if (!b)
		return;
	if (b->fd >= 0) {
		if (b->st)
			munmap(b->st, sizeof(*b->st));
		close(b->fd);
	} else {
		free(b->st);
	}
	free(b->path);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

double budget_reserve(struct api_budget *b, double earliest, double latest)
{
	struct budget_state *st;
	double start = earliest, nth;

	pthread_mutex_lock(&b->mu);
	if (file_lock(b, F_WRLCK)) {
		/* cannot coordinate: keep to our own share of the ring */
		pthread_mutex_unlock(&b->mu);
		return earliest + b->window / b->n;
	}
	st = b->st;
	state_check(b);
	if (st->pause_until > start)
		start = st->pause_until + 0.25 * api_random();
	/* our n-th latest slot, whoever took the ones after it */
	nth = st->slot[(st->head + API_BUDGET_SLOTS - b->n) % API_BUDGET_SLOTS];
	if (nth + b->window + b->margin > start)
		start = nth + b->window + b->margin;
	if (st->last > start)
		start = st->last;
	if (start <= latest) {
		st->slot[st->head] = start;
		st->head = (st->head + 1) % API_BUDGET_SLOTS;
		st->last = start;
	}
	file_lock(b, F_UNLCK);
	pthread_mutex_unlock(&b->mu);
	return start;
}

void budget_pause(struct api_budget *b, double until)
{
	pthread_mutex_lock(&b->mu);
	if (!file_lock(b, F_WRLCK)) {
		state_check(b);
		if (until > b->st->pause_until)
			b->st->pause_until = until;
		file_lock(b, F_UNLCK);
	}
	pthread_mutex_unlock(&b->mu);
}

unsigned budget_left(struct api_budget *b, double now, bool *paused)
{
	struct budget_state *st;
	unsigned used = 0;

	*paused = false;
	pthread_mutex_lock(&b->mu);
	if (file_lock(b, F_RDLCK)) {
		pthread_mutex_unlock(&b->mu);
		return b->n;
	}
	st = b->st;
	if (st->magic == BUDGET_MAGIC && st->version == BUDGET_VERSION) {
		/* everyone's requests in our window, against our budget */
		for (unsigned i = 0; i < API_BUDGET_SLOTS; i++)
			if (st->slot[i] + b->window + b->margin > now)
				used++;
		*paused = st->pause_until > now;
	}
	file_lock(b, F_UNLCK);
	pthread_mutex_unlock(&b->mu);
	return used < b->n ? b->n - used : 0;
}

double budget_rate(const struct api_budget *b)
{
	return (double)b->n / b->window;
}

unsigned budget_size(const struct api_budget *b)
{
	return b->n;
}
