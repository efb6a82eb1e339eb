/*
 * seal.c — the link's privacy: session keys from the handshake (libsodium BLAKE2b) and
 * the AEAD that seals every frame after it (OpenSSL libcrypto EVP).
 *
 * How: each connection gets two keys, one per direction, from a keyed BLAKE2b (the shared
 * secret is the key) over a context string, the direction, and both HELLO payloads as
 * sent, which hold both fresh nonces, both names, both roles and both nodes' flags: no
 * two connections (nor the two directions of one) share a key, and a capture replayed
 * into a new connection meets keys it was not sealed with.  A frame is sealed with
 * AES-256-GCM when both CPUs have AES-NI, else ChaCha20-Poly1305, both through OpenSSL's
 * EVP (docs/DESIGN.md says why OpenSSL and not libsodium's AEADs: measured, 2-2.5x
 * faster on the same CPU); each direction keeps one EVP_CIPHER_CTX holding its expanded
 * key, set up once per key, and a frame only sets its nonce in it.  The 32-byte header is the
 * associated data (kind, type, len, seq and flags cannot be changed); the 96-bit nonce is
 * the direction byte and the count of frames this direction sealed under its key, which
 * both sides keep: a frame dropped, replayed or reordered fails to open, as does one
 * flipped bit.  Before REP_REKEY_FRAMES frames or rekey_bytes bytes under one key (far
 * below both ciphers' limits) the sender ratchets to the next key, BLAKE2b keyed with the
 * old one, marks that frame REP_F_REKEY and wipes the old key; the receiver ratchets when
 * it sees the mark, which is authenticated under the new key (a forged mark fails to open
 * and the receiver goes back to the old key).
 *
 * Locking: none.  A struct rep_dir belongs to one thread at a time (link.c: the writer
 * holding l->writing seals, the receive thread opens).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "replica_i.h"

_Static_assert(REP_TAG_BYTES == 16 && REP_KEY_BYTES == 32, "AEAD tag and key sizes");
_Static_assert(REP_PAYLOAD_MAX < INT_MAX, "a payload fits EVP's int lengths");

#define NONCE_BYTES 12

static const char kdf_ctx[] = "heapfs replica session keys v2";
static const char rekey_ctx[] = "heapfs replica rekey v2";

const char *rep_cipher_name(unsigned cipher)
{
	switch (cipher) {
	case REP_C_CHACHA:
		return "chacha20poly1305";
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
	return flags_a & flags_b & REP_HF_AES ? REP_C_AESGCM : REP_C_CHACHA;
}

/* The direction's context takes its (new) key; counters start again. */
static int dir_key(struct rep_dir *d)
{
	d->ctr = 0;
	d->bytes = 0;
	return EVP_CipherInit_ex(d->ctx, NULL, NULL, d->key, NULL, -1) == 1 ? 0 : -EIO;
}

static int derive(struct rep_dir *d, unsigned cipher, const uint8_t key[REP_KEY_BYTES],
		  uint8_t dir, const void *hi, size_t li, const void *ha, size_t la)
{
	const EVP_CIPHER *evp = cipher == REP_C_AESGCM ? EVP_aes_256_gcm()
						       : EVP_chacha20_poly1305();
	crypto_generichash_state st;
	uint32_t l32 = (uint32_t)li;

	memset(d, 0, sizeof(*d));
	d->cipher = cipher;
	d->dir = dir;
	crypto_generichash_init(&st, key, REP_KEY_BYTES, REP_KEY_BYTES);
	crypto_generichash_update(&st, (const unsigned char *)kdf_ctx, sizeof(kdf_ctx));
	crypto_generichash_update(&st, &dir, 1);
	/* the first HELLO's length: the two cannot be cut at another place */
	crypto_generichash_update(&st, (const unsigned char *)&l32, sizeof(l32));
	crypto_generichash_update(&st, hi, li);
	crypto_generichash_update(&st, ha, la);
	crypto_generichash_final(&st, d->key, REP_KEY_BYTES);
	sodium_memzero(&st, sizeof(st));
	/* the cipher once; the key by dir_key (and again at each rekey) */
	d->ctx = EVP_CIPHER_CTX_new();
	if (!d->ctx)
		return -ENOMEM;
	if (EVP_CipherInit_ex(d->ctx, evp, NULL, NULL, NULL, 1) != 1)
		return -EIO;
	return dir_key(d);
}

int rep_session_keys(struct rep_dir *i2a, struct rep_dir *a2i, unsigned cipher,
		     const uint8_t key[REP_KEY_BYTES], const void *hello_i, size_t len_i,
		     const void *hello_a, size_t len_a)
{
	int rc;

	memset(a2i, 0, sizeof(*a2i));
	if ((rc = derive(i2a, cipher, key, REP_ROLE_INITIATOR, hello_i, len_i, hello_a, len_a)) ||
	    (rc = derive(a2i, cipher, key, REP_ROLE_ACCEPTOR, hello_i, len_i, hello_a, len_a))) {
		rep_dir_wipe(i2a);
		rep_dir_wipe(a2i);
	}
	return rc;
}

/* The next key: BLAKE2b keyed with the current one; the current one is gone after. */
static int ratchet(struct rep_dir *d)
{
	uint8_t next[REP_KEY_BYTES];

	crypto_generichash(next, sizeof(next), (const unsigned char *)rekey_ctx,
			   sizeof(rekey_ctx), d->key, sizeof(d->key));
	memcpy(d->key, next, sizeof(next));
	sodium_memzero(next, sizeof(next));
	return dir_key(d);
}

/* Frame d->ctr's nonce into d's context, and the header as associated data: the
 * direction byte, then the counter little-endian (a key per direction and connection
 * already; the direction byte keeps the two apart even if keys ever met). */
static int begin(struct rep_dir *d, const struct rep_hdr *h, int enc)
{
	unsigned char n[NONCE_BYTES] = { d->dir };
	int outl;

	memcpy(n + 4, &d->ctr, sizeof(d->ctr));
	if (EVP_CipherInit_ex(d->ctx, NULL, NULL, NULL, n, enc) != 1 ||
	    EVP_CipherUpdate(d->ctx, NULL, &outl, (const unsigned char *)h, sizeof(*h)) != 1)
		return -EIO;
	return 0;
}

int rep_sealv(struct rep_dir *d, uint64_t rekey_bytes, struct rep_hdr *h, unsigned char *dst,
	      const struct iovec *iov, int n)
{
	size_t off = 0;
	int rekeyed = 0, outl;

	if (d->ctr >= REP_REKEY_FRAMES || d->bytes >= rekey_bytes) {
		if (ratchet(d))
			return -EIO;
		rekeyed = 1;
	}
	h->flags = (uint16_t)(REP_F_SEALED | (rekeyed ? REP_F_REKEY : 0));
	h->sum = 0;
	if (begin(d, h, 1))
		return -EIO;
	/* each piece encrypted straight into its place in dst: no gathering copy first */
	for (int i = 0; i < n && off < h->len; i++) {
		size_t len = iov[i].iov_len < h->len - off ? iov[i].iov_len : h->len - off;

		if (len && EVP_CipherUpdate(d->ctx, dst + off, &outl, iov[i].iov_base,
					    (int)len) != 1)
			return -EIO;
		off += len;
	}
	if (off != h->len || EVP_CipherFinal_ex(d->ctx, dst + off, &outl) != 1 ||
	    EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, REP_TAG_BYTES, dst + off) != 1)
		return -EIO;
	d->ctr++;
	d->bytes += h->len;
	return rekeyed;
}

int rep_seal(struct rep_dir *d, uint64_t rekey_bytes, struct rep_hdr *h, unsigned char *dst,
	     const unsigned char *src)
{
	struct iovec v = { (void *)src, h->len };

	return rep_sealv(d, rekey_bytes, h, dst, &v, 1);
}

int rep_open(struct rep_dir *d, const struct rep_hdr *h, unsigned char *buf, char *why,
	     size_t whylen)
{
	uint8_t old[REP_KEY_BYTES];
	uint64_t ctr = d->ctr, bytes = d->bytes;
	bool rekey = h->flags & REP_F_REKEY;
	int outl, ok;

	if (!(h->flags & REP_F_SEALED) || h->sum || h->len > REP_PAYLOAD_MAX) {
		snprintf(why, whylen, "a frame of kind %u not sealed on an encrypted link",
			 h->kind);
		return -EBADMSG;
	}
	if (rekey) {
		/* the old key kept: a frame that fails to open must leave the key as it was */
		memcpy(old, d->key, sizeof(old));
		ok = !ratchet(d);
	} else {
		ok = 1;
	}
	ok = ok && !begin(d, h, 0) &&
	     EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, REP_TAG_BYTES,
				 buf + h->len) == 1 &&
	     (!h->len || EVP_CipherUpdate(d->ctx, buf, &outl, buf, (int)h->len) == 1) &&
	     EVP_CipherFinal_ex(d->ctx, buf + h->len, &outl) == 1;
	if (!ok) {
		/* nothing of a frame that did not authenticate is left to read */
		sodium_memzero(buf, h->len);
		if (rekey) {
			memcpy(d->key, old, sizeof(old));
			dir_key(d);
		}
		d->ctr = ctr;
		d->bytes = bytes;
		snprintf(why, whylen, "a sealed frame of kind %u, %u bytes, failed to "
			 "authenticate (changed, replayed or dropped on the way)", h->kind, h->len);
	}
	if (rekey)
		sodium_memzero(old, sizeof(old));
	if (!ok)
		return -EBADMSG;
	d->ctr++;
	d->bytes += h->len;
	return rekey;
}

void rep_dir_wipe(struct rep_dir *d)
{
	EVP_CIPHER_CTX_free(d->ctx); /* clears the expanded key too */
	sodium_memzero(d, sizeof(*d));
}
