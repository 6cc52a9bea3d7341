/*
 * log: the one logger of dtfs, dtfsctl and dtfs-emu.
 *
 * Levels are syslog's (LOG_ERR .. LOG_DEBUG). Messages go to stderr, to a
 * file (log_use_file(), the log_file= option), or to syslog once
 * log_use_syslog() is called (a daemonized mount without log_file=). Every
 * function is safe from any thread; a message is written with one write(2)
 * so lines of different threads never interleave.
 *
 * Style of messages: lower case, what failed first, the subject quoted, then
 * the reason. Never log secrets, tokens, Authorization headers or row
 * contents.
 */
#ifndef DTFS_LOG_H
#define DTFS_LOG_H

#include <stdarg.h>
#include <syslog.h>

/* Set the program name shown in front of each line and the highest level
 * that is printed (LOG_NOTICE by default). */
void log_init(const char *ident, int level);

/* Send later messages to syslog (LOG_DAEMON) instead of stderr; does
 * nothing once log_use_file() succeeded. */
void log_use_syslog(void);

/* Append later messages to the file at path (created mode 0600), each line
 * with a UTC time stamp and the process id. The descriptor is opened now,
 * so it survives a daemon's fork and chdir. Returns 0 or -errno. */
int log_use_file(const char *path) __attribute__((warn_unused_result));

/* "error", "warning", "notice", "info" or "debug" to its level; -1 when
 * none of them. */
int log_level_parse(const char *name);
void log_set_level(int level);

int log_get_level(void);

void log_msg(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)                                                  \
	do {                                                           \
		if (log_get_level() >= LOG_INFO)                       \
			log_msg(LOG_INFO, __VA_ARGS__);                \
	} while (0)
#define log_debug(...)                                                 \
	do {                                                           \
		if (log_get_level() >= LOG_DEBUG)                      \
			log_msg(LOG_DEBUG, __VA_ARGS__);               \
	} while (0)

#endif
