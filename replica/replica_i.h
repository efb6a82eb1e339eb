/*
 * replica_i.h — private to replica/ (and its unit tests): the wire format, the
 * handshake's building blocks, and socket helpers.
 *
 * A frame is a 32-byte header followed by `len` payload bytes.  Integers little-endian
 * (the struct is used as is; the host is checked to be little-endian).
 *
 *   magic u32 "HRPL" | version u8 | kind u8 | flags u16 | type u32 | len u32 |
 *   seq u64 | sum u64 (XXH3-64 of the payload; 0 in a sealed frame)
 *
 * Sealed frames (every frame after the handshake of a link with encryption on): flags
 * has REP_F_SEALED, `len` is the plaintext's length and len + REP_TAG_BYTES bytes follow:
 * the AEAD ciphertext and its tag, the 32-byte header (kind, type, len, seq, flags) the
 * associated data, the nonce the sender's frame counter in this direction under the
 * current key (seal.c).  REP_F_REKEY: the sender moved to the next key with this frame.
 *
 * Kinds: HELLO (handshake: who I am, my nonce), AUTH (my MAC over both HELLOs), MSG (a
 * caller's message: type >= REP_TYPE_USER, seq = previous + 1), ACK (acknowledged up to
 * seq, with the non-zero statuses), HB (heartbeat, empty).  Control kinds carry type 0
 * and seq 0.  rep_frame_check() decides whether a header is acceptable before anything
 * is read or allocated for its payload.
 */
#ifndef HEAPFS_REPLICA_I_H
#define HEAPFS_REPLICA_I_H

#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "replica.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "replica/: the wire structs are little-endian and used as is"
#endif

#define REP_MAGIC 0x4c505248u /* "HRPL" */
#define REP_VERSION 2 /* 2: the initiator proves first, sealed frames */
#define REP_F_SEALED 1u
#define REP_F_REKEY 2u
#define REP_TAG_BYTES 16 /* the AEAD's tag (both ciphers) */

enum rep_kind { REP_K_HELLO = 1, REP_K_AUTH, REP_K_MSG, REP_K_ACK, REP_K_HB, REP_K_MAX };

struct rep_hdr {
	uint32_t magic;
	uint8_t version;
	uint8_t kind;
	uint16_t flags;
	uint32_t type;
	uint32_t len;
	uint64_t seq;
	uint64_t sum;
};
_Static_assert(sizeof(struct rep_hdr) == 32, "frame header is 32 bytes");

#define REP_NONCE_BYTES 32
#define REP_MAC_BYTES 32 /* crypto_auth_BYTES */

/* HELLO payload: fixed part then name_len bytes of name (no NUL). */
struct rep_hello {
	uint32_t proto;     /* REP_VERSION */
	uint8_t role;       /* REP_ROLE_* of the sender */
	uint8_t name_len;   /* 1..REP_NODE_MAX */
	uint16_t flags;     /* REP_HF_*: what the sender's config and CPU say */
	uint64_t instance;  /* random per rep_start: tells a restarted peer from a reconnect */
	uint64_t next_seq;  /* the seq of the sender's first MSG on this connection */
	uint8_t nonce[REP_NONCE_BYTES];
	char name[REP_NODE_MAX];
};
#define REP_HELLO_FIXED (sizeof(struct rep_hello) - REP_NODE_MAX)
enum { REP_ROLE_INITIATOR = 1, REP_ROLE_ACCEPTOR = 2 };
/* HELLO flags: encryption on (partner.encrypt), the CPU seals AES-256-GCM in hardware
 * (then the link uses it when both have it, ChaCha20-Poly1305 otherwise) */
#define REP_HF_ENCRYPT 1u
#define REP_HF_AES 2u
#define REP_HF_ALL (REP_HF_ENCRYPT | REP_HF_AES)

/* ACK payload: everything up to `upto` is acknowledged, with status 0 unless listed. */
struct rep_ack_ent {
	uint64_t seq;
	int32_t status;
	uint32_t pad;
};
struct rep_ack {
	uint64_t upto;
	uint32_t n;          /* entries that follow, <= REP_ACK_MAX_ENTS */
	uint32_t pad;
	struct rep_ack_ent ent[];
};
#define REP_ACK_MAX_ENTS 256
/* A status travels as -1..-REP_ERRNO_MAX (anything else a receiver returns goes as -EIO):
 * an errno a file system may answer; -512 and below are the kernel's own (ERESTARTSYS...),
 * which FUSE refuses in a reply. */
#define REP_ERRNO_MAX 511
/* The largest seq a MSG frame or a HELLO's next_seq may carry: the link would need 2^62
 * messages to get there, and seq + 1 never wraps. */
#define REP_SEQ_MAX (1ull << 62)

/* An ACK payload as rep_ack_parse() found it: entries in increasing seq order. */
struct rep_ack_parsed {
	uint64_t upto;
	unsigned n;
	struct rep_ack_ent ent[REP_ACK_MAX_ENTS];
};

/* frame.c */
/* Fill h for a frame of kind/type/seq whose payload is iov[0..n) (len bytes in all). */
void rep_frame_fill(struct rep_hdr *h, unsigned kind, uint32_t type, uint64_t seq,
		    const struct iovec *iov, int n, size_t len);
/* 0, or -EBADMSG with why filled: a header that no payload could make right. */
int rep_frame_check(const struct rep_hdr *h, char *why, size_t whylen);
/* 0 when the payload's checksum matches the header's, else -EBADMSG. */
int rep_frame_sum_ok(const struct rep_hdr *h, const void *payload);
/* The frame kinds a connection's reader takes (a mask of 1 << kind): the peer's HELLO,
 * then its AUTH, then, authenticated, messages, acks and heartbeats.  Any other kind is
 * refused from its header, before its payload is read. */
#define REP_KINDS_HELLO (1u << REP_K_HELLO)
#define REP_KINDS_AUTH (1u << REP_K_AUTH)
#define REP_KINDS_UP (1u << REP_K_MSG | 1u << REP_K_ACK | 1u << REP_K_HB)
/* A MSG's seq on a connection whose peer announced `first` (its HELLO's next_seq): the
 * first MSG at or after it (messages the peer queued while this connection shook hands
 * went with the old one), then one by one.  *next is the seq expected next, 0 before the
 * first MSG; advanced when 0 is returned, else -EBADMSG with why filled. */
int rep_msg_seq_check(uint64_t first, uint64_t *next, uint64_t seq, char *why, size_t whylen);
/* Parse an ACK payload of len bytes that may acknowledge seqs acked + 1 .. sent (the
 * highest seq whose frame was handed to the socket): 0 with *out filled, or -EBADMSG
 * (why filled) for a length that disagrees with its count, padding that is not zero, an
 * upto outside that range, entries not in increasing order inside acked + 1 .. upto, or a
 * status that is not -1..-REP_ERRNO_MAX. */
int rep_ack_parse(const void *p, size_t len, uint64_t acked, uint64_t sent,
		  struct rep_ack_parsed *out, char *why, size_t whylen);

/* auth.c */
/* A HELLO for us (flags: REP_HF_*); *len its payload length. */
void rep_hello_make(struct rep_hello *h, size_t *len, unsigned role, const char *node,
		    uint64_t instance, uint64_t next_seq, unsigned flags);
/* 0, or -EBADMSG (why filled) for a HELLO payload that is not well formed, has the wrong
 * role, or carries our own name. */
int rep_hello_parse(const void *p, size_t len, unsigned want_role, const char *own,
		    struct rep_hello *out, char *why, size_t whylen);
/* The MAC that the side playing `role` sends: crypto_auth over a context string, the
 * role, and both HELLO payloads (initiator's first), which hold both nonces and names. */
void rep_auth_mac(uint8_t mac[REP_MAC_BYTES], const uint8_t key[REP_KEY_BYTES], unsigned role,
		  const void *hello_i, size_t len_i, const void *hello_a, size_t len_a);
/* 0 when mac is the one `role` must send, else -EACCES (constant time). */
int rep_auth_verify(const uint8_t mac[REP_MAC_BYTES], const uint8_t key[REP_KEY_BYTES],
		    unsigned role, const void *hello_i, size_t len_i, const void *hello_a,
		    size_t len_a);

/* An all-zero AUTH: the acceptor's answer to an initiator whose proof failed (it reveals
 * nothing; the initiator says "the secrets differ" instead of only "closed"). */
bool rep_auth_is_refusal(const uint8_t mac[REP_MAC_BYTES]);

/* seal.c: the session's keys and the AEAD of every frame after the handshake. */
enum rep_cipher { REP_C_NONE, REP_C_CHACHA, REP_C_AESGCM };
const char *rep_cipher_name(unsigned cipher);
/* The cipher two HELLOs' flags agree on: REP_C_NONE when neither encrypts, -1 when one
 * does and the other does not (a configuration to fix). */
int rep_cipher_pick(unsigned flags_a, unsigned flags_b);
/* One direction of a session: its key (ratcheted by each rekey), how many frames and
 * bytes it sealed (or opened) under it, and the OpenSSL context holding the expanded key
 * (made by rep_session_keys, freed by rep_dir_wipe). */
struct evp_cipher_ctx_st;
struct rep_dir {
	unsigned cipher;
	uint8_t dir; /* REP_ROLE_* of the sender: in every nonce */
	uint64_t ctr, bytes;
	uint8_t key[REP_KEY_BYTES];
	struct evp_cipher_ctx_st *ctx;
};
/* The keys of both directions of a session: a keyed BLAKE2b (the shared secret the key)
 * over a context, the direction and both HELLO payloads (both nonces, names, roles,
 * instances, flags), so each connection and each direction has keys of its own.  0, or
 * -ENOMEM / -EIO with both left wiped.  Both are overwritten: wipe them first if used. */
int rep_session_keys(struct rep_dir *i2a, struct rep_dir *a2i, unsigned cipher,
		     const uint8_t key[REP_KEY_BYTES], const void *hello_i, size_t len_i,
		     const void *hello_a, size_t len_a);
/* Rekey limits: a direction moves to its next key after this many frames or bytes
 * (REP_REKEY_BYTES; the environment's HEAPFS_REP_REKEY_BYTES overrides it, for tests). */
#define REP_REKEY_FRAMES (1ull << 32)
#define REP_REKEY_BYTES (64ull << 30)
/* Seal h's frame: src (len = h->len bytes; src == dst allowed) into dst, the tag after it
 * at dst + len; sets h->flags (REP_F_SEALED, REP_F_REKEY when it moved to the next key
 * first: returns 1 then, else 0) and h->sum = 0; -EIO if OpenSSL fails (drop the
 * connection).  The caller is the only one sealing d. */
int rep_seal(struct rep_dir *d, uint64_t rekey_bytes, struct rep_hdr *h, unsigned char *dst,
	     const unsigned char *src);
/* Same as rep_seal for a payload in pieces (h->len bytes in all), each encrypted straight
 * into its place in dst (no gathering copy). */
int rep_sealv(struct rep_dir *d, uint64_t rekey_bytes, struct rep_hdr *h, unsigned char *dst,
	      const struct iovec *iov, int n);
/* Open the frame h whose h->len + REP_TAG_BYTES wire bytes are at buf, in place: 0 (the
 * plaintext at buf; 1 when it moved to the next key), or -EBADMSG (why filled): not
 * sealed, or it fails to authenticate (tampered, replayed, dropped one before it, wrong
 * key).  A frame that fails leaves d as it was. */
int rep_open(struct rep_dir *d, const struct rep_hdr *h, unsigned char *buf, char *why,
	     size_t whylen);
void rep_dir_wipe(struct rep_dir *d);

/* link.c helpers the tests use too */
/* Parse "HOST:PORT" (HOST an IPv4 literal or a name) into a sockaddr_in; 0 / -EINVAL. */
struct sockaddr_in;
int rep_addr_parse(const char *s, struct sockaddr_in *out);
/* Write all of iov (modified); 0 / -errno. */
int rep_writev_all(int fd, struct iovec *iov, int n);

#endif
