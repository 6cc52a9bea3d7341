#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "dtfs";
static atomic_int log_level = LOG_NOTICE;
static atomic_int log_syslog;
static atomic_int log_fd = -1;	/* log_file=: lines with a time stamp */

void log_init(const char *ident, int level)
{
	log_ident = ident;
	atomic_store(&log_level, level);
}

void log_use_syslog(void)
{
	if (atomic_load(&log_fd) >= 0)
		return; /* a log file stays the destination */
	openlog(log_ident, LOG_PID, LOG_DAEMON);
	atomic_store(&log_syslog, 1);
}

int log_use_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0)
		return -errno;
	fd = atomic_exchange(&log_fd, fd);
	if (fd >= 0)
		close(fd);
	return 0;
}

int log_level_parse(const char *name)
{
	static const struct {
		const char *name;
		int level;
	} names[] = {
		{ "error", LOG_ERR }, { "err", LOG_ERR },
		{ "warning", LOG_WARNING }, { "warn", LOG_WARNING },
		{ "notice", LOG_NOTICE }, { "info", LOG_INFO },
		{ "debug", LOG_DEBUG },
	};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcasecmp(name, names[i].name))
			return names[i].level;
	return -1;
}

void log_set_level(int level)
{
	atomic_store(&log_level, level);
}

int log_get_level(void)
{
	return atomic_load(&log_level);
}

static const char *level_name(int level)
{
	switch (level) {
	case LOG_EMERG:
	case LOG_ALERT:
	case LOG_CRIT:
	case LOG_ERR:
		return "error";
	case LOG_WARNING:
		return "warning";
	case LOG_NOTICE:
		return "notice";
	case LOG_INFO:
		return "info";
	default:
		return "debug";
	}
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
	char line[2048];
	int n, m, fd;

	if (level > atomic_load(&log_level))
		return;
	if (atomic_load(&log_syslog)) {
		vsyslog(level, fmt, ap);
		return;
	}
	fd = atomic_load(&log_fd);
	if (fd >= 0) {
		struct timespec ts;
		struct tm tm;
		char when[32] = "";

		clock_gettime(CLOCK_REALTIME, &ts);
		if (gmtime_r(&ts.tv_sec, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		n = snprintf(line, sizeof(line), "%s.%03ldZ %s[%d]: %s: ",
			     when, ts.tv_nsec / 1000000L, log_ident,
			     (int)getpid(), level_name(level));
	} else {
		fd = STDERR_FILENO;
		n = snprintf(line, sizeof(line), "%s: %s: ", log_ident,
			     level_name(level));
	}
	if (n < 0)
		return;
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* one write so that concurrent lines do not interleave */
	if (write(fd, line, (size_t)n) < 0)
		return;
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
