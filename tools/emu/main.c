/*
 * dtfs-emu: a local emulator of the cursor Data Tables API
 * (../../../shared/spec/cursor-api.md) for tests, benchmarks and the demo.
 * See tools/emu/README.md for the command line and control endpoints.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "emu_i.h"
#include "log.h"

#define DEFAULT_LISTEN "127.0.0.1:8765"
#define DEMO_ID "dtfs-demo"
#define DEMO_SECRET "dtfs-demo-secret"

static void usage(FILE *f)
{
	fputs("usage: dtfs-emu [options]\n"
	      "  --listen HOST:PORT          address to serve "
	      "(default " DEFAULT_LISTEN "; PORT 0 picks a free port)\n"
	      "  --data DIR                  load one table per subfolder "
	      "(schema.json, rows.jsonl);\n"
	      "                              the folder name, "
	      "percent-decoded, is the table name\n"
	      "  --generate NAME:ROWS        add a deterministic synthetic "
	      "table (repeatable)\n"
	      "  --client ID:SECRET[:SCOPES] an OAuth client (repeatable); "
	      "SCOPES comma or space\n"
	      "                              separated, default "
	      "data-table:read,data-table:write,architect\n"
	      "  --rate-limit N[/SECONDS]    requests per window per client "
	      "(default 300/60)\n"
	      "  --latency MS                delay every API and token "
	      "response\n"
	      "  --fail-rate P               share (0..1) of API requests "
	      "answered 500/502/503\n"
	      "  --token-ttl SECONDS         token lifetime (default 3600)\n"
	      "  --max-page-size N           largest rows pageSize (default "
	      "1000)\n"
	      "production dialect (/api/v2/flows/datatables):\n"
	      "  --job-delay MS              how long an import or export job "
	      "stays Processing\n"
	      "                              (default 100)\n"
	      "  --max-rows N                rows per table (default 5000)\n"
	      "  --max-properties N          properties per table (default "
	      "50)\n"
	      "  --max-tables N              tables in all (default 200)\n"
	      "  --max-name-length N         characters of a table name or "
	      "row key (default 256)\n"
	      "  --max-flows-page-size N     largest rows pageSize (default "
	      "500; larger is 400)\n"
	      "  --download-status 302|303   status of the download redirect "
	      "(default 303)\n"
	      "  -v, --verbose               log every request to stderr\n"
	      "  -h, --help                  show this help\n"
	      "With no --client, one demo client '" DEMO_ID
	      "' (secret '" DEMO_SECRET "') is defined.\n"
	      "The first line on stdout is 'listening on http://HOST:PORT'.\n",
	      f);
}

static int parse_scopes(const char *s, unsigned *out)
{
	unsigned scopes = 0;

	while (*s) {
		size_t n = strcspn(s, " ,");
		unsigned bits = emu_scope_bits(s, n);

		if (bits)
			scopes |= bits;
		else if (n)
			return -EINVAL;
		s += n;
		while (*s == ' ' || *s == ',')
			s++;
	}
	*out = scopes;
	return 0;
}

static int add_client(struct emu *e, const char *arg)
{
	const char *c1 = strchr(arg, ':');
	const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	unsigned scopes = EMU_SCOPE_ALL;
	struct emu_client *c;

	if (!c1 || c1 == arg || c1[1] == '\0' || c2 == c1 + 1)
		return -EINVAL;
	if (c2 && parse_scopes(c2 + 1, &scopes))
		return -EINVAL;
	e->clients =
	    emu_xrealloc(e->clients, (e->nclients + 1) * sizeof(*e->clients));
	c = &e->clients[e->nclients++];
	memset(c, 0, sizeof(*c));
	c->id = strndup(arg, (size_t)(c1 - arg));
	c->secret =
	    c2 ? strndup(c1 + 1, (size_t)(c2 - c1 - 1)) : emu_xstrdup(c1 + 1);
	if (!c->id || !c->secret)
		return -ENOMEM;
	c->scopes = scopes;
	return 0;
}

/* Bind and listen on HOST:PORT ([v6]:PORT allowed); returns the fd. */
static int open_listener(const char *spec, char *host, size_t hostsz,
			 unsigned *port)
{
	const char *colon = strrchr(spec, ':');
	char portstr[16];
	struct addrinfo hints, *res = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd = -1, one = 1, rc;
	size_t hl;

	if (!colon || colon == spec || strlen(colon + 1) >= sizeof(portstr))
		return -EINVAL;
	hl = (size_t)(colon - spec);
	if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (hl >= hostsz)
		return -EINVAL;
	memcpy(host, spec, hl);
	host[hl] = '\0';
	snprintf(portstr, sizeof(portstr), "%s", colon + 1);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(host, portstr, &hints, &res);
	if (rc) {
		log_err("cannot resolve '%s': %s", spec, gai_strerror(rc));
		return -EINVAL;
	}
	fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 512) ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl))
		goto fail;
	freeaddrinfo(res);
	if (ss.ss_family == AF_INET6)
		*port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	else
		*port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return fd;
fail:
	rc = -errno;
	log_err("cannot listen on '%s': %s", spec, strerror(errno));
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	return rc;
}

/* The integer flags: checked numbers into the config, in the ranges
 * /_emu/config takes (emu_settings). */
static int set_limit(struct emu_config *c, int opt, const char *arg)
{
	for (size_t i = 0; i < emu_nsettings; i++) {
		const struct emu_setting *s = &emu_settings[i];

		if (s->opt != opt)
			continue;
		if (emu_parse_long(arg, s->min, s->max,
				   emu_setting_field(c, s))) {
			log_err("%s wants an integer from %ld to %ld", s->flag,
				s->min, s->max);
			return -EINVAL;
		}
		return 0;
	}
	return -EINVAL;
}

static void emu_release(struct emu *e)
{
	emu_free_tokens(e);
	emu_store_release(&e->store);
	for (size_t i = 0; i < e->nclients; i++) {
		free(e->clients[i].id);
		free(e->clients[i].secret);
	}
	free(e->clients);
	free(e->race.del_key);
	free(e->race.insert);
	pthread_mutex_destroy(&e->lock);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"data", required_argument, NULL, 'd'},
	    {"generate", required_argument, NULL, 'g'},
	    {"client", required_argument, NULL, 'c'},
	    {"rate-limit", required_argument, NULL, 'r'},
	    {"latency", required_argument, NULL, 'L'},
	    {"fail-rate", required_argument, NULL, 'f'},
	    {"token-ttl", required_argument, NULL, 't'},
	    {"max-page-size", required_argument, NULL, 'm'},
	    {"job-delay", required_argument, NULL, 'J'},
	    {"max-rows", required_argument, NULL, 'R'},
	    {"max-properties", required_argument, NULL, 'P'},
	    {"max-tables", required_argument, NULL, 'T'},
	    {"max-name-length", required_argument, NULL, 'N'},
	    {"max-flows-page-size", required_argument, NULL, 'F'},
	    {"download-status", required_argument, NULL, 'D'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct emu e;
	const char *listen_spec = DEFAULT_LISTEN;
	char host[256];
	unsigned port = 0;
	int opt, fd, sig, status = 1;
	struct MHD_Daemon *d = NULL;
	sigset_t set;

	log_init("dtfs-emu", LOG_NOTICE);
	memset(&e, 0, sizeof(e));
	pthread_mutex_init(&e.lock, NULL);
	e.race.route = -1;
	emu_store_init(&e.store);
	emu_tokens_init(&e);
	e.cursor_secret = emu_random64();
	e.config.rate_limit = 300;
	e.config.rate_window_s = 60;
	e.config.token_ttl_s = 3600;
	e.config.max_page_size = 1000;
	e.config.fail_next_status = 503;
	e.config.job_delay_ms = 100;
	e.config.max_rows = 5000;
	e.config.max_properties = 50;
	e.config.max_tables = 200;
	e.config.max_name_length = 256;
	e.config.max_flows_page_size = 500;
	e.config.download_status = 303;
	e.anonymous.id = NULL;

	while ((opt = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (opt) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'd':
			if (emu_load_dir(&e.store, optarg))
				goto out;
			break;
		case 'g': {
			char *colon = strrchr(optarg, ':');
			long n;

			if (!colon || colon == optarg ||
			    emu_parse_long(colon + 1, 0, 100000000, &n)) {
				log_err("--generate wants NAME:ROWS, not '%s'",
					optarg);
				goto out;
			}
			*colon = '\0';
			if (emu_generate(&e.store, optarg, (size_t)n))
				goto out;
			break;
		}
		case 'c':
			if (add_client(&e, optarg)) {
				log_err("--client wants ID:SECRET[:SCOPES] "
					"with known scopes");
				goto out;
			}
			break;
		case 'r': {
			char *slash = strchr(optarg, '/');

			if (slash)
				*slash = '\0';
			if (emu_parse_long(optarg, 0, 1000000000,
					   &e.config.rate_limit) ||
			    (slash &&
			     emu_parse_long(slash + 1, 1, 86400,
					    &e.config.rate_window_s))) {
				log_err("--rate-limit wants N[/SECONDS]");
				goto out;
			}
			break;
		}
		case 'f':
			if (emu_parse_double(optarg, 0, 1,
					     &e.config.fail_rate)) {
				log_err("--fail-rate wants a number from 0 "
					"to 1");
				goto out;
			}
			break;
		case 'L':
		case 't':
		case 'm':
		case 'J':
		case 'R':
		case 'P':
		case 'T':
		case 'N':
		case 'F':
		case 'D':
			if (set_limit(&e.config, opt, optarg))
				goto out;
			break;
		case 'v':
			log_init("dtfs-emu", LOG_DEBUG);
			break;
		case 'h':
			usage(stdout);
			status = 0;
			goto out;
		default:
			usage(stderr);
			status = 2;
			goto out;
		}
	}
	if (optind < argc) {
		usage(stderr);
		status = 2;
		goto out;
	}
	if (e.nclients == 0 && add_client(&e, DEMO_ID ":" DEMO_SECRET))
		goto out;
	emu_store_sort(&e.store);

	fd = open_listener(listen_spec, host, sizeof(host), &port);
	if (fd < 0)
		goto out;
	/* block the stop signals in every thread; main waits for them */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (emu_jobs_start(&e)) {
		log_err("cannot start the job worker");
		close(fd);
		goto out;
	}
	d = emu_http_start(&e, fd);
	if (!d) {
		log_err("cannot start the HTTP server");
		close(fd);
		goto out;
	}
	if (strchr(host, ':'))
		printf("listening on http://[%s]:%u\n", host, port);
	else
		printf("listening on http://%s:%u\n", host, port);
	fflush(stdout);
	log_notice("serving %zu table(s) on port %u", e.store.ntables, port);
	for (;;) {
		if (sigwait(&set, &sig) == 0)
			break;
	}
	log_notice("stopping on signal %d", sig);
	emu_http_stop(d);
	emu_jobs_stop(&e);
	status = 0;
out:
	emu_jobs_stop(&e);
	emu_release(&e);
	return status;
}
