/*
 * log: the one logger of dtfs, dtfsctl and dtfs-emu.
 *
 * Levels are syslog's (LOG_ERR .. LOG_DEBUG). Messages go to stderr, or to
 * syslog once log_use_syslog() is called (a daemonized mount). Every
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

/* Send later messages to syslog (LOG_DAEMON) instead of stderr. */
void log_use_syslog(void);

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
