/*
 * pacer.c: one rate-limit pacer per struct api, shared by every thread.
 *
 * The server reports how many requests are left in its window and when the
 * window ends. While plenty are left, requests go out freely. When the
 * estimate drops under a threshold (a quarter of the largest budget seen,
 * at least API_BUDGET_LOW), the rest are spread evenly over the time left,
 * so the budget lasts until the window resets instead of ending in a burst
 * of 429s. With nothing left, everyone waits for the reset. A 429 pauses
 * every thread for its Retry-After, with a per-thread jitter so they do not
 * all come back at the same instant.
 *
 * With a configured budget (budget.c; the flows dialect, which gets no
 * headers) every request also takes a slot of that budget, after whatever
 * the headers ask for, and a 429 pauses the budget too (every process
 * sharing its file).
 */
#include "api_i.h"

void pacer_init(struct api_pacer *p)
{
	pthread_mutex_init(&p->mu, NULL);
	p->pause_until = 0;
	p->reset_at = -1;
	p->remaining = -1;
	p->estimate = -1;
	p->max_seen = 0;
	p->next_slot = 0;
	p->inflight = 0;
	p->budget = NULL;
}

void pacer_destroy(struct api_pacer *p)
{
	budget_free(p->budget);
	p->budget = NULL;
	pthread_mutex_destroy(&p->mu);
}

double pacer_reserve(struct api_pacer *p, double now, double latest)
{
	double start = now, wait;

	pthread_mutex_lock(&p->mu);
	if (p->pause_until > now)
		start = p->pause_until + api_random();
	p->inflight++;
	if (p->estimate >= 0 && p->reset_at > start) {
		long thresh = p->max_seen / 4;

		if (thresh < API_BUDGET_LOW)
			thresh = API_BUDGET_LOW;
		if (p->estimate == 0) {
			/* nothing left: wait for the new window */
			start = p->reset_at + 0.25 * api_random();
		} else if (p->estimate < thresh) {
			if (p->next_slot > start)
				start = p->next_slot;
			if (start < p->reset_at)
				p->next_slot =
				    start + (p->reset_at - start) / p->estimate;
		}
		if (p->estimate > 0)
			p->estimate--;
	}
	pthread_mutex_unlock(&p->mu);
	if (p->budget)
		start = budget_reserve(p->budget, start > now ? start : now,
				       latest);
	wait = start - now;
	return wait > 0 ? wait : 0;
}

void pacer_update(struct api_pacer *p, double now, long remaining, long reset_s)
{
	pthread_mutex_lock(&p->mu);
	if (p->inflight > 0)
		p->inflight--;
	if (remaining < 0) {
		pthread_mutex_unlock(&p->mu);
		return;
	}
	p->remaining = remaining;
	/* requests still in flight may not be counted yet */
	p->estimate = remaining > p->inflight ? remaining - p->inflight : 0;
	if (remaining + 1 > p->max_seen)
		p->max_seen = remaining + 1;
	p->reset_at = reset_s >= 0 ? now + (double)reset_s : -1;
	pthread_mutex_unlock(&p->mu);
}

void pacer_pause(struct api_pacer *p, double now, double seconds)
{
	pthread_mutex_lock(&p->mu);
	if (now + seconds > p->pause_until)
		p->pause_until = now + seconds;
	p->remaining = 0;
	p->estimate = 0;
	if (p->reset_at < p->pause_until)
		p->reset_at = p->pause_until;
	pthread_mutex_unlock(&p->mu);
	if (p->budget)
		budget_pause(p->budget, now + seconds);
}

bool pacer_low(struct api_pacer *p, double now)
{
	bool low;

	pthread_mutex_lock(&p->mu);
	low = p->pause_until > now ||
	      (p->remaining >= 0 && p->remaining < API_BUDGET_LOW &&
	       (p->reset_at < 0 || now < p->reset_at));
	pthread_mutex_unlock(&p->mu);
	if (!low && p->budget) {
		unsigned n = budget_size(p->budget), thresh = n / 4;
		bool paused;
		unsigned left = budget_left(p->budget, now, &paused);

		if (thresh > API_BUDGET_LOW)
			thresh = API_BUDGET_LOW;
		if (!thresh)
			thresh = 1;
		low = paused || left < thresh;
	}
	return low;
}

double pacer_rate(struct api_pacer *p, double now)
{
	double rate = 0;

	pthread_mutex_lock(&p->mu);
	if (p->estimate >= 0 && p->reset_at > now)
		rate = (double)p->estimate / (p->reset_at - now);
	pthread_mutex_unlock(&p->mu);
	if (p->budget) {
		double b = budget_rate(p->budget);

		if (!(rate > 0) || b < rate)
			rate = b;
	}
	return rate;
}
