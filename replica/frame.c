/*
 * frame.c — the link's wire format (replica_i.h): building a frame header, deciding
 * whether a received one is acceptable before its payload is read, the order of MSG
 * seqs, and parsing an ACK payload (every field checked against what it may acknowledge
 * before anything uses it).  The reader in link.c calls these on bytes from the socket;
 * tests/fuzz calls them on bytes from the fuzzer.
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
	if (h->version != REP_VERSION || (h->flags & ~(REP_F_SEALED | REP_F_REKEY)) ||
	    (h->flags && (h->kind == REP_K_HELLO || h->kind == REP_K_AUTH)) ||
	    h->flags == REP_F_REKEY) {
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
	if (h->kind == REP_K_MSG ? h->type < REP_TYPE_USER || !h->seq || h->seq > REP_SEQ_MAX
				 : h->type || h->seq) {
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

int rep_msg_seq_check(uint64_t first, uint64_t *next, uint64_t seq, char *why, size_t whylen)
{
	if (seq > REP_SEQ_MAX || (*next ? seq != *next : seq < first)) {
		snprintf(why, whylen, "message seq %llu out of order (expected %llu)",
			 (unsigned long long)seq, (unsigned long long)(*next ? *next : first));
		return -EBADMSG;
	}
	*next = seq + 1;
	return 0;
}

int rep_ack_parse(const void *p, size_t len, uint64_t acked, uint64_t sent,
		  struct rep_ack_parsed *out, char *why, size_t whylen)
{
	const unsigned char *b = p;
	struct rep_ack a;
	uint64_t prev = acked;

	if (len < sizeof(a)) {
		snprintf(why, whylen, "ack of %zu bytes", len);
		return -EBADMSG;
	}
	memcpy(&a, b, sizeof(a));
	/* n first: then n * size cannot overflow */
	if (a.pad || a.n > REP_ACK_MAX_ENTS || len != sizeof(a) + a.n * sizeof(struct rep_ack_ent)) {
		snprintf(why, whylen, "malformed ack of %zu bytes (%u entries)", len, a.n);
		return -EBADMSG;
	}
	if (a.upto <= acked || a.upto > sent) {
		snprintf(why, whylen, "ack up to seq %llu: outside %llu..%llu",
			 (unsigned long long)a.upto, (unsigned long long)acked + 1,
			 (unsigned long long)sent);
		return -EBADMSG;
	}
	out->upto = a.upto;
	out->n = a.n;
	for (unsigned i = 0; i < a.n; i++) {
		struct rep_ack_ent *e = &out->ent[i];

		memcpy(e, b + sizeof(a) + i * sizeof(*e), sizeof(*e));
		if (e->seq <= prev || e->seq > a.upto || e->pad) {
			snprintf(why, whylen, "ack entry for seq %llu: not in %llu..%llu",
				 (unsigned long long)e->seq, (unsigned long long)prev + 1,
				 (unsigned long long)a.upto);
			return -EBADMSG;
		}
		if (e->status >= 0 || e->status < -REP_ERRNO_MAX) {
			snprintf(why, whylen, "ack of seq %llu with status %d: not an errno",
				 (unsigned long long)e->seq, e->status);
			return -EBADMSG;
		}
		prev = e->seq;
	}
	return 0;
}
