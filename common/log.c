#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "dtfs";
static atomic_int log_level = LOG_NOTICE;
static atomic_int log_syslog;

void log_init(const char *ident, int level)
{
	log_ident = ident;
	atomic_store(&log_level, level);
}

void log_use_syslog(void)
{
	openlog(log_ident, LOG_PID, LOG_DAEMON);
	atomic_store(&log_syslog, 1);
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
	int n, m;

	if (level > atomic_load(&log_level))
		return;
	if (atomic_load(&log_syslog)) {
		vsyslog(level, fmt, ap);
		return;
	}
	n = snprintf(line, sizeof(line), "%s: %s: ", log_ident,
		     level_name(level));
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
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
