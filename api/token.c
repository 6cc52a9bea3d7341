/*
 * token.c: the OAuth client-credentials token, one per struct api.
 *
 * Whichever thread finds the token missing or close to expiry fetches a new
 * one; the others wait on the condition variable, or keep using the old
 * token while it is still comfortably valid. A token is refreshed
 * token_margin() seconds before it expires (at least a tenth of its life,
 * and up to 5 s for short ones: a 3 s token is replaced after 2 s), so a
 * long job sees no 401 from expiry. Secrets and tokens are wiped before
 * their memory is freed and never logged.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "api_i.h"
#include "log.h"

void token_init(struct api_token *t)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void token_destroy(struct api_token *t)
{
	wipe_free(t->value);
	t->value = NULL;
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
}

double token_margin(double lifetime_s)
{
	double tenth = lifetime_s / 10, floor = lifetime_s / 3;

	if (floor > 5)
		floor = 5;
	return tenth > floor ? tenth : floor;
}

/* POST the token request. On success *value is the token (malloc'ed),
 * *lifetime its validity in seconds and *sent_at when it was asked for. */
static int token_fetch(struct api *api, char **value, double *lifetime,
		       double *sent_at)
{
	struct api_resp resp;
	struct api_req req = {0};
	struct json_object *root = NULL, *tok, *exp;
	char *url = NULL, *body = NULL;
	bool scoped;
	int rc;

	api_resp_init(&resp);
	if (asprintf(&url, "%s/oauth/token", api->login_url) < 0) {
		url = NULL;
		rc = -ENOMEM;
		goto out;
	}
again:
	scoped = api->dialect->scope && !atomic_load(&api->scope_refused);
	if (scoped) {
		/* "data-table:read data-table:write" form-encoded */
		char *scope = api_escape(api->dialect->scope);

		if (!scope ||
		    asprintf(&body, "grant_type=client_credentials&scope=%s",
			     scope) < 0)
			body = NULL;
		free(scope);
	} else {
		body = strdup("grant_type=client_credentials");
	}
	if (!body) {
		rc = -ENOMEM;
		goto out;
	}
	req.method = "POST";
	req.url = url;
	req.body = body;
	req.body_len = strlen(body);
	req.content_type = "application/x-www-form-urlencoded";
	req.what = "get token for client";
	req.subject = api->client_id;
	req.token_request = true;
	/* a refused scope is handled below */
	req.quiet_status = scoped ? 400 : 0;
	rc = api_http(api, &req, &resp);
	if (rc && scoped && resp.status == 400 &&
	    !strcmp(resp.code, "invalid_scope")) {
		/* the OAuth client has roles but not this scope (the SDKs
		 * send none for client credentials): ask without one */
		log_info("get token for client '%s': scope '%s' refused "
			 "(invalid_scope), asking without a scope",
			 api->client_id, api->dialect->scope);
		atomic_store(&api->scope_refused, true);
		free(body);
		body = NULL;
		goto again;
	}
	if (rc && scoped && resp.status == 400)
		log_err("get token for client '%s' failed: HTTP 400%s%s "
			"(correlation %s)%s",
			api->client_id, resp.code[0] ? " " : "", resp.code,
			resp.correlation[0] ? resp.correlation : "none",
			!resp.code[0] || !strcmp(resp.code, "invalid_client")
			    ? ": wrong client id or secret?"
			    : "");
	if (rc && resp.status >= 400 && resp.status <= 499 &&
	    resp.status != 408 && resp.status != 429)
		/* refused credentials or grant; other 4xx: a wrong
		 * login_url rather than bad input of ours */
		rc = resp.status <= 403 ? -EACCES : -EIO;
	if (rc)
		goto out;
	atomic_fetch_add(&api->n_tokens, 1);
	root = json_tokener_parse(resp.body.p ? resp.body.p : "");
	if (!root || !json_object_object_get_ex(root, "access_token", &tok) ||
	    !json_object_is_type(tok, json_type_string) ||
	    !json_object_get_string_len(tok)) {
		log_err("get token for client '%s' failed: no access_token "
			"in the answer (correlation %s)",
			api->client_id,
			resp.correlation[0] ? resp.correlation : "none");
		rc = -EPROTO;
		goto out;
	}
	/* it goes into an HTTP header: CR/LF or other bytes there would
	 * inject headers into every request */
	for (const char *c = json_object_get_string(tok); *c; c++) {
		if (*c < 0x21 || *c > 0x7e) {
			log_err("get token for client '%s' failed: the token "
				"holds characters that are not printable ASCII "
				"(correlation %s)",
				api->client_id,
				resp.correlation[0] ? resp.correlation
						    : "none");
			rc = -EPROTO;
			goto out;
		}
	}
	*lifetime = 3600;
	if (json_object_object_get_ex(root, "expires_in", &exp) &&
	    (json_object_is_type(exp, json_type_int) ||
	     json_object_is_type(exp, json_type_double)) &&
	    json_object_get_double(exp) > 0)
		*lifetime = json_object_get_double(exp);
	*value = strdup(json_object_get_string(tok));
	if (!*value) {
		rc = -ENOMEM;
		goto out;
	}
	*sent_at = resp.sent_at;
	log_debug("got a token for client '%s', valid %.0f s", api->client_id,
		  *lifetime);
out:
	if (root) {
		/* the token text lives in the json-c object too */
		if (json_object_object_get_ex(root, "access_token", &tok) &&
		    json_object_is_type(tok, json_type_string))
			explicit_bzero((char *)json_object_get_string(tok),
				       (size_t)json_object_get_string_len(tok));
		json_object_put(root);
	}
	if (resp.body.p)
		explicit_bzero(resp.body.p, resp.body.len);
	api_resp_release(&resp);
	free(body);
	free(url);
	return rc;
}

int token_get(struct api *api, char **out, uint64_t *gen)
{
	struct api_token *t = &api->token;
	int rc = 0;

	*out = NULL;
	pthread_mutex_lock(&t->mu);
	for (;;) {
		double now = api_now();
		char *value = NULL;
		double lifetime = 0, sent_at = 0;

		if (t->value && now < t->refresh_at)
			break;
		if (t->fetching) {
			uint64_t seq = t->fetch_seq;
			double life = t->expires_at - t->fetched_at;

			/* someone is refreshing: an old token that is still
			 * well inside its life is good enough meanwhile */
			if (t->value &&
			    now < t->expires_at - token_margin(life) / 2)
				break;
			while (t->fetching && seq == t->fetch_seq)
				pthread_cond_wait(&t->cv, &t->mu);
			if (t->fetch_err) {
				rc = t->fetch_err;
				goto out;
			}
			continue;
		}
		t->fetching = true;
		pthread_mutex_unlock(&t->mu);
		rc = token_fetch(api, &value, &lifetime, &sent_at);
		pthread_mutex_lock(&t->mu);
		t->fetching = false;
		t->fetch_seq++;
		t->fetch_err = rc;
		if (!rc) {
			wipe_free(t->value);
			t->value = value;
			t->fetched_at = sent_at;
			t->expires_at = sent_at + lifetime;
			t->refresh_at = t->expires_at - token_margin(lifetime);
			t->gen++;
		}
		pthread_cond_broadcast(&t->cv);
		if (rc)
			goto out;
	}
	*out = strdup(t->value);
	*gen = t->gen;
	if (!*out)
		rc = -ENOMEM;
out:
	pthread_mutex_unlock(&t->mu);
	return rc;
}

void token_invalidate(struct api *api, uint64_t gen)
{
	struct api_token *t = &api->token;

	pthread_mutex_lock(&t->mu);
	if (t->gen == gen && t->value) {
		wipe_free(t->value);
		t->value = NULL;
		t->refresh_at = 0;
	}
	pthread_mutex_unlock(&t->mu);
}
