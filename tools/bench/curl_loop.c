/*
 * curl_loop: the plainest full export a script could do, as a floor for
 * dtfsctl export (issue 3): one libcurl easy handle (one keep-alive
 * connection), GET every rows page in sequence, find nextPageCursor in the
 * body, write the page bodies as received to stdout. No JSON parsing, no
 * JSONL, no cache: what is left is HTTP and the emulator.
 *
 *     curl_loop API_URL TABLE_ID TOKEN [PAGE_SIZE]
 *
 * Prints "pages N bytes N" on stderr; exit 0, or 1 on any error.
 * Built by tools/bench/run (cc -O2 ... -lcurl); not part of the meson build.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct buf {
	char *p;
	size_t len, cap;
};

static size_t on_data(char *data, size_t size, size_t n, void *arg)
{
	struct buf *b = arg;
	size_t add = size * n;

	if (b->len + add + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1 << 20;
		char *p;

		while (cap < b->len + add + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return 0;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, add);
	b->len += add;
	b->p[b->len] = '\0';
	return add;
}

/* The value of "nextPageCursor" (malloc'ed), or NULL at the last page. */
static char *next_cursor(const char *body, size_t len)
{
	static const char key[] = "\"nextPageCursor\"";
	const char *k = memmem(body, len, key, sizeof(key) - 1), *s, *e;

	if (!k)
		return NULL;
	s = k + sizeof(key) - 1;
	while (*s == ' ' || *s == ':')
		s++;
	if (*s != '"')
		return NULL; /* null */
	s++;
	e = strchr(s, '"');
	return e ? strndup(s, (size_t)(e - s)) : NULL;
}

int main(int argc, char **argv)
{
	const char *api, *table, *token;
	long page_size = 1000, status = 0;
	struct curl_slist *hdrs = NULL;
	struct buf b = { 0 };
	char url[4096], auth[4096], *cursor = NULL;
	unsigned long long pages = 0, bytes = 0;
	CURL *h;
	int rc = 1;

	if (argc < 4 || argc > 5) {
		fprintf(stderr,
			"usage: curl_loop API_URL TABLE_ID TOKEN [PAGE_SIZE]\n");
		return 2;
	}
	api = argv[1];
	table = argv[2];
	token = argv[3];
	if (argc == 5)
		page_size = strtol(argv[4], NULL, 10);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	h = curl_easy_init();
	if (!h)
		return 1;
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
	hdrs = curl_slist_append(hdrs, auth);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	for (;;) {
		CURLcode cc;

		if (cursor) {
			char *esc = curl_easy_escape(h, cursor, 0);

			snprintf(url, sizeof(url),
				 "%s/api/v2/datatables/%s/rows?pageSize=%ld"
				 "&cursor=%s",
				 api, table, page_size, esc ? esc : "");
			curl_free(esc);
		} else {
			snprintf(url, sizeof(url),
				 "%s/api/v2/datatables/%s/rows?pageSize=%ld",
				 api, table, page_size);
		}
		b.len = 0;
		curl_easy_setopt(h, CURLOPT_URL, url);
		cc = curl_easy_perform(h);
		if (cc != CURLE_OK) {
			fprintf(stderr, "curl_loop: %s\n",
				curl_easy_strerror(cc));
			goto out;
		}
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
		if (status != 200) {
			fprintf(stderr, "curl_loop: page %llu: HTTP %ld\n",
				pages, status);
			goto out;
		}
		if (fwrite(b.p, 1, b.len, stdout) != b.len)
			goto out;
		pages++;
		bytes += b.len;
		free(cursor);
		cursor = next_cursor(b.p, b.len);
		if (!cursor)
			break;
	}
	if (fflush(stdout))
		goto out;
	fprintf(stderr, "pages %llu bytes %llu\n", pages, bytes);
	rc = 0;
out:
	free(cursor);
	free(b.p);
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(h);
	curl_global_cleanup();
	return rc;
}
