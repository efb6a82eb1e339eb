/*
 * rep-fuzz.h — what the partner link's harnesses (fuzz-frame, fuzz-hello, fuzz-ack,
 * fuzz-open)
 * share: each parser of replica/ run on a payload, and the promises an accepted one must
 * keep checked (abort() when one is broken, which libFuzzer reports as a crash).  Every
 * payload is a private copy of exactly its bytes, so ASan sees a read past it.
 * No locking: single-threaded.
 */
#ifndef HEAPFS_REP_FUZZ_H
#define HEAPFS_REP_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "replica_i.h"

/* A malloc'ed copy of data[0..len), or NULL. */
static inline void *rf_copy(const uint8_t *data, size_t len)
{
	void *p = malloc(len ? len : 1);

	if (p)
		memcpy(p, data, len);
	return p;
}

/* A session's receiving direction with fixed HELLOs and secret (no randomness: a crash
 * replays); the cipher from the input's length (both are fuzzed). */
static inline void rf_session(struct rep_dir *rx, const uint8_t *data, size_t size)
{
	static const uint8_t key[REP_KEY_BYTES] = { 7 };
	static const char hi[] = "initiator hello", ha[] = "acceptor hello";
	struct rep_dir other;
	unsigned cipher = size % 2 && crypto_aead_aes256gcm_is_available() ? REP_C_AESGCM
									  : REP_C_CHACHA;

	(void)data;
	if (sodium_init() < 0)
		abort();
	if (rep_session_keys(rx, &other, cipher, key, hi, sizeof(hi), ha, sizeof(ha)))
		abort();
	rep_dir_wipe(&other);
}

/* p as a HELLO from either role, to a node named "a". */
static inline void rf_hello(const void *p, size_t len)
{
	for (unsigned role = REP_ROLE_INITIATOR; role <= REP_ROLE_ACCEPTOR; role++) {
		struct rep_hello h;
		char why[160];

		if (rep_hello_parse(p, len, role, "a", &h, why, sizeof(why)))
			continue;
		if (h.role != role || !h.name_len || h.name_len > REP_NODE_MAX ||
		    REP_HELLO_FIXED + h.name_len != len || !h.next_seq ||
		    h.next_seq > REP_SEQ_MAX || (h.name_len == 1 && h.name[0] == 'a'))
			abort();
		for (unsigned i = 0; i < h.name_len; i++)
			if (h.name[i] < '!' || h.name[i] > '~')
				abort();
	}
}

/* p as an ACK that may cover acked + 1 .. sent. */
static inline void rf_ack(const void *p, size_t len, uint64_t acked, uint64_t sent)
{
	static struct rep_ack_parsed a;
	uint64_t prev = acked;
	char why[160];

	if (rep_ack_parse(p, len, acked, sent, &a, why, sizeof(why)))
		return;
	if (a.upto <= acked || a.upto > sent || a.n > REP_ACK_MAX_ENTS ||
	    len != sizeof(struct rep_ack) + a.n * sizeof(struct rep_ack_ent))
		abort();
	for (unsigned i = 0; i < a.n; i++) {
		if (a.ent[i].seq <= prev || a.ent[i].seq > a.upto || a.ent[i].status >= 0 ||
		    a.ent[i].status < -REP_ERRNO_MAX)
			abort();
		prev = a.ent[i].seq;
	}
}

#endif
