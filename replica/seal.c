/*
 * seal.c — the link's privacy: session keys from the handshake and the AEAD that seals
 * every frame after it (libsodium).
 *
 * How: each connection gets two keys, one per direction, from a keyed BLAKE2b (the shared
 * secret is the key) over a context string, the direction, and both HELLO payloads as
 * sent, which hold both fresh nonces, both names, both roles and both nodes' flags: no
 * two connections (nor the two directions of one) share a key, and a capture replayed
 * into a new connection meets keys it was not sealed with.  A frame is sealed with
 * AES-256-GCM when both CPUs have it in hardware, else XChaCha20-Poly1305 (docs/DESIGN.md
 * says why: measured); the 32-byte header is the associated data (kind, type, len, seq
 * and flags cannot be changed), the nonce is the count of frames this direction sealed
 * under its key, which both sides keep: a frame dropped, replayed or reordered fails to
 * open, as does one flipped bit.  Before REP_REKEY_FRAMES frames or rekey_bytes bytes
 * under one key (far below both ciphers' limits; the 96-bit GCM nonce never wraps
 * either) the sender ratchets to the next key, BLAKE2b keyed with the old one, marks
 * that frame REP_F_REKEY and wipes the old key; the receiver ratchets when it sees the
 * mark, which is authenticated under the new key (a forged mark fails to open).
 *
 * Locking: none.  A struct rep_dir belongs to one thread at a time (link.c: the writer
 * holding l->writing seals, the receive thread opens).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "replica_i.h"

_Static_assert(REP_TAG_BYTES == crypto_aead_xchacha20poly1305_ietf_ABYTES &&
	       REP_TAG_BYTES == crypto_aead_aes256gcm_ABYTES, "tag size");
_Static_assert(REP_KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES &&
	       REP_KEY_BYTES == crypto_aead_aes256gcm_KEYBYTES, "key size");

static const char kdf_ctx[] = "heapfs replica session keys v2";
static const char rekey_ctx[] = "heapfs replica rekey v2";

const char *rep_cipher_name(unsigned cipher)
{
	switch (cipher) {
	case REP_C_XCHACHA:
		return "xchacha20poly1305";
	case REP_C_AESGCM:
		return "aes256gcm";
	default:
		return "none";
	}
}

int rep_cipher_pick(unsigned flags_a, unsigned flags_b)
{
	if ((flags_a ^ flags_b) & REP_HF_ENCRYPT)
		return -1;
	if (!(flags_a & REP_HF_ENCRYPT))
		return REP_C_NONE;
	return flags_a & flags_b & REP_HF_AES ? REP_C_AESGCM : REP_C_XCHACHA;
}

static void dir_key(struct rep_dir *d)
{
	if (d->cipher == REP_C_AESGCM)
		crypto_aead_aes256gcm_beforenm(&d->aes, d->key);
	d->ctr = 0;
	d->bytes = 0;
}

static void derive(struct rep_dir *d, unsigned cipher, const uint8_t key[REP_KEY_BYTES],
		   uint8_t dir, const void *hi, size_t li, const void *ha, size_t la)
{
	crypto_generichash_state st;
	uint32_t l32 = (uint32_t)li;

	memset(d, 0, sizeof(*d));
	d->cipher = cipher;
	crypto_generichash_init(&st, key, REP_KEY_BYTES, REP_KEY_BYTES);
	crypto_generichash_update(&st, (const unsigned char *)kdf_ctx, sizeof(kdf_ctx));
	crypto_generichash_update(&st, &dir, 1);
	/* the first HELLO's length: the two cannot be cut at another place */
	crypto_generichash_update(&st, (const unsigned char *)&l32, sizeof(l32));
	crypto_generichash_update(&st, hi, li);
	crypto_generichash_update(&st, ha, la);
	crypto_generichash_final(&st, d->key, REP_KEY_BYTES);
	sodium_memzero(&st, sizeof(st));
	dir_key(d);
}

void rep_session_keys(struct rep_dir *i2a, struct rep_dir *a2i, unsigned cipher,
		      const uint8_t key[REP_KEY_BYTES], const void *hello_i, size_t len_i,
		      const void *hello_a, size_t len_a)
{
	derive(i2a, cipher, key, REP_ROLE_INITIATOR, hello_i, len_i, hello_a, len_a);
	derive(a2i, cipher, key, REP_ROLE_ACCEPTOR, hello_i, len_i, hello_a, len_a);
}

/* The next key: BLAKE2b keyed with the current one; the current one is gone after. */
static void ratchet(struct rep_dir *d)
{
	uint8_t next[REP_KEY_BYTES];

	crypto_generichash(next, sizeof(next), (const unsigned char *)rekey_ctx,
			   sizeof(rekey_ctx), d->key, sizeof(d->key));
	memcpy(d->key, next, sizeof(next));
	sodium_memzero(next, sizeof(next));
	dir_key(d);
}

/* The nonce of frame ctr: the counter, little-endian, zero-padded (a key per direction
 * and connection: a counter is all a nonce needs to be unique) */
static void nonce_of(unsigned char *n, size_t nlen, uint64_t ctr)
{
	memset(n, 0, nlen);
	memcpy(n, &ctr, sizeof(ctr));
}

int rep_seal(struct rep_dir *d, uint64_t rekey_bytes, struct rep_hdr *h, unsigned char *dst,
	     const unsigned char *src)
{
	unsigned char n[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
	int rekeyed = 0;

	if (d->ctr >= REP_REKEY_FRAMES || d->bytes >= rekey_bytes) {
		ratchet(d);
		rekeyed = 1;
	}
	h->flags = (uint16_t)(REP_F_SEALED | (rekeyed ? REP_F_REKEY : 0));
	h->sum = 0;
	nonce_of(n, sizeof(n), d->ctr);
	if (d->cipher == REP_C_AESGCM)
		crypto_aead_aes256gcm_encrypt_detached_afternm(
			dst, dst + h->len, NULL, src, h->len, (const unsigned char *)h, sizeof(*h),
			NULL, n, &d->aes);
	else
		crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
			dst, dst + h->len, NULL, src, h->len, (const unsigned char *)h, sizeof(*h),
			NULL, n, d->key);
	d->ctr++;
	d->bytes += h->len;
	return rekeyed;
}

int rep_sealv(struct rep_dir *d, uint64_t rekey_bytes, struct rep_hdr *h, unsigned char *dst,
	      const struct iovec *iov, int n)
{
	size_t off = 0;

	if (n == 1)
		return rep_seal(d, rekey_bytes, h, dst, iov[0].iov_base);
	for (int i = 0; i < n; i++) {
		if (iov[i].iov_len)
			memcpy(dst + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	return rep_seal(d, rekey_bytes, h, dst, dst);
}

int rep_open(struct rep_dir *d, const struct rep_hdr *h, unsigned char *buf, char *why,
	     size_t whylen)
{
	unsigned char n[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
	struct rep_dir next;
	struct rep_dir *k = d;
	int rc;

	if (!(h->flags & REP_F_SEALED) || h->sum) {
		snprintf(why, whylen, "a frame of kind %u not sealed on an encrypted link",
			 h->kind);
		return -EBADMSG;
	}
	if (h->flags & REP_F_REKEY) {
		/* on a copy: a frame that fails to open must leave the key as it was */
		next = *d;
		ratchet(&next);
		k = &next;
	}
	nonce_of(n, sizeof(n), k->ctr);
	if (k->cipher == REP_C_AESGCM)
		rc = crypto_aead_aes256gcm_decrypt_detached_afternm(
			buf, NULL, buf, h->len, buf + h->len, (const unsigned char *)h,
			sizeof(*h), n, &k->aes);
	else
		rc = crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
			buf, NULL, buf, h->len, buf + h->len, (const unsigned char *)h,
			sizeof(*h), n, k->key);
	if (rc) {
		if (k == &next)
			rep_dir_wipe(&next);
		snprintf(why, whylen, "a sealed frame of kind %u, %u bytes, failed to "
			 "authenticate (changed, replayed or dropped on the way)", h->kind, h->len);
		return -EBADMSG;
	}
	if (k == &next) {
		*d = next;
		rep_dir_wipe(&next);
	}
	d->ctr++;
	d->bytes += h->len;
	return k == &next;
}

void rep_dir_wipe(struct rep_dir *d)
{
	sodium_memzero(d, sizeof(*d));
}
