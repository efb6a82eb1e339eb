/*
 * frame.c — the link's frame header (replica_i.h): building one, and deciding whether a
 * received one is acceptable before its payload is read.
 *
 * How: the header carries an XXH3-64 checksum of the payload, computed over the caller's
 * iovecs in one streaming pass (no gathering copy), through libxxhash's x86 dispatch
 * (the widest vector unit the CPU has).  rep_frame_check() bounds `len` per
 * kind (HELLO and ACK are small, HB and AUTH fixed, MSG <= REP_PAYLOAD_MAX), so the reader
 * sizes its buffers only from lengths that passed; seq rules are the reader's (link.c).
 *
 * Locking: none (pure functions).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t by value, as img/ does */
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
/* libxxhash's run-time dispatch picks AVX2/AVX-512 where the CPU has them: 38 GB/s
 * against 11 for the plain SSE2 entry points here, and a 1 MiB sync message is hashed
 * twice on its critical path (sender and receiver) */
#include <xxh_x86dispatch.h>
#endif

#include "replica_i.h"

void rep_frame_fill(struct rep_hdr *h, unsigned kind, uint32_t type, uint64_t seq,
		    const struct iovec *iov, int n, size_t len)
{
	memset(h, 0, sizeof(*h));
	h->magic = REP_MAGIC;
	h->version = REP_VERSION;
	h->kind = (uint8_t)kind;
	h->type = type;
	h->len = (uint32_t)len;
	h->seq = seq;
	if (n == 1) {
		h->sum = XXH3_64bits(iov[0].iov_base, iov[0].iov_len);
	} else {
		XXH3_state_t st;

		XXH3_64bits_reset(&st);
		for (int i = 0; i < n; i++)
			XXH3_64bits_update(&st, iov[i].iov_base, iov[i].iov_len);
		h->sum = XXH3_64bits_digest(&st);
	}
}

/* The largest payload each kind may carry. */
static size_t kind_max(unsigned kind)
{
	switch (kind) {
	case REP_K_HELLO:
		return sizeof(struct rep_hello);
	case REP_K_AUTH:
		return REP_MAC_BYTES;
	case REP_K_MSG:
		return REP_PAYLOAD_MAX;
	case REP_K_ACK:
		return sizeof(struct rep_ack) + REP_ACK_MAX_ENTS * sizeof(struct rep_ack_ent);
	default:
		return 0;
	}
}

int rep_frame_check(const struct rep_hdr *h, char *why, size_t whylen)
{
	if (h->magic != REP_MAGIC) {
		snprintf(why, whylen, "bad magic 0x%08x", h->magic);
		return -EBADMSG;
	}
	if (h->version != REP_VERSION || h->flags) {
		snprintf(why, whylen, "version %u flags 0x%x not spoken", h->version, h->flags);
		return -EBADMSG;
	}
	if (!h->kind || h->kind >= REP_K_MAX) {
		snprintf(why, whylen, "unknown frame kind %u", h->kind);
		return -EBADMSG;
	}
	if (h->len > kind_max(h->kind)) {
		snprintf(why, whylen, "frame kind %u of %u bytes: more than %zu", h->kind, h->len,
			 kind_max(h->kind));
		return -EBADMSG;
	}
	if (h->kind == REP_K_MSG ? h->type < REP_TYPE_USER || !h->seq : h->type || h->seq) {
		snprintf(why, whylen, "frame kind %u with type %u seq %llu", h->kind, h->type,
			 (unsigned long long)h->seq);
		return -EBADMSG;
	}
	if (h->kind == REP_K_AUTH && h->len != REP_MAC_BYTES) {
		snprintf(why, whylen, "auth frame of %u bytes", h->len);
		return -EBADMSG;
	}
	return 0;
}

int rep_frame_sum_ok(const struct rep_hdr *h, const void *payload)
{
	return XXH3_64bits(payload, h->len) == h->sum ? 0 : -EBADMSG;
}
