/*
 * seal-bench.c — the link's AEAD alone, in memory: how fast replica/seal.c (OpenSSL
 * libcrypto's EVP) seals and opens frames, next to libsodium's AEADs on the same frames in
 * the same run (libsodium sealed the link before; docs/DESIGN.md keeps the figures).
 *
 * How: SIZE MiB of frames (1 MiB, then 4 KiB), each with its tag after it, sealed in
 * place (rep_seal) and then opened in place (rep_open) in order, per cipher; libsodium's
 * AES-256-GCM (where the CPU has it) and XChaCha20-Poly1305 encrypt and decrypt the same
 * frames detached.  Each figure is the best of 3 (the machine is shared).  One thread.
 *
 * Usage: seal-bench [--size MIB]   (default 256)
 */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "replica_i.h"

static const uint8_t key[REP_KEY_BYTES] = { 1 };

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double mbs(size_t bytes, double t0)
{
	return (double)bytes / (now() - t0) / 1e6;
}

/* replica/seal.c: every frame sealed, then every frame opened (MB/s of payload) */
static void ours(unsigned cipher, unsigned char *buf, size_t frame, size_t n, double *s,
		 double *o)
{
	struct rep_dir tx, rx, other;
	struct rep_hdr h;
	char why[160];
	double t;

	if (rep_session_keys(&tx, &other, cipher, key, "i", 1, "a", 1))
		exit(1);
	rep_dir_wipe(&other);
	if (rep_session_keys(&rx, &other, cipher, key, "i", 1, "a", 1))
		exit(1);
	rep_dir_wipe(&other);
	rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, 1, NULL, 0, frame);
	t = now();
	for (size_t i = 0; i < n; i++)
		if (rep_seal(&tx, REP_REKEY_BYTES, &h, buf + i * (frame + REP_TAG_BYTES),
			     buf + i * (frame + REP_TAG_BYTES)))
			exit(1);
	*s = fmax(*s, mbs(n * frame, t));
	t = now();
	for (size_t i = 0; i < n; i++)
		if (rep_open(&rx, &h, buf + i * (frame + REP_TAG_BYTES), why, sizeof(why))) {
			fprintf(stderr, "seal-bench: %s\n", why);
			exit(1);
		}
	*o = fmax(*o, mbs(n * frame, t));
	rep_dir_wipe(&tx);
	rep_dir_wipe(&rx);
}

/* libsodium's AEADs on the same frames, detached, nonce = frame number */
static void sodium(unsigned cipher, unsigned char *buf, size_t frame, size_t n, double *s,
		   double *o)
{
	unsigned char nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES] = { 0 };
	crypto_aead_aes256gcm_state st;
	struct rep_hdr h;
	double t;

	rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, 1, NULL, 0, frame);
	crypto_aead_aes256gcm_beforenm(&st, key);
	t = now();
	for (size_t i = 0; i < n; i++) {
		unsigned char *p = buf + i * (frame + REP_TAG_BYTES);

		memcpy(nonce, &i, sizeof(i));
		if (cipher == REP_C_AESGCM)
			crypto_aead_aes256gcm_encrypt_detached_afternm(
				p, p + frame, NULL, p, frame, (void *)&h, sizeof(h), NULL, nonce, &st);
		else
			crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
				p, p + frame, NULL, p, frame, (void *)&h, sizeof(h), NULL, nonce, key);
	}
	*s = fmax(*s, mbs(n * frame, t));
	t = now();
	for (size_t i = 0; i < n; i++) {
		unsigned char *p = buf + i * (frame + REP_TAG_BYTES);
		int rc;

		memcpy(nonce, &i, sizeof(i));
		if (cipher == REP_C_AESGCM)
			rc = crypto_aead_aes256gcm_decrypt_detached_afternm(
				p, NULL, p, frame, p + frame, (void *)&h, sizeof(h), nonce, &st);
		else
			rc = crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
				p, NULL, p, frame, p + frame, (void *)&h, sizeof(h), nonce, key);
		if (rc)
			exit(1);
	}
	*o = fmax(*o, mbs(n * frame, t));
	sodium_memzero(&st, sizeof(st));
}

int main(int argc, char **argv)
{
	static const size_t frames[] = { 1 << 20, 4 << 10 };
	size_t total = 256u << 20;
	bool aes = false;
	unsigned char *buf;

	if (argc == 3 && !strcmp(argv[1], "--size"))
		total = strtoull(argv[2], NULL, 10) << 20;
	else if (argc != 1)
		total = 0;
	if (total < (1u << 20)) {
		fprintf(stderr, "usage: seal-bench [--size MIB (>= 1)]\n");
		return 2;
	}
	if (sodium_init() < 0)
		return 1;
	aes = crypto_aead_aes256gcm_is_available();
	buf = calloc(1, total + (total >> 12) * REP_TAG_BYTES + REP_TAG_BYTES);
	if (!buf)
		return 1;
	printf("seal-bench: %zu MiB sealed in place then opened, best of 3 (MB/s of payload)\n",
	       total >> 20);
	for (size_t f = 0; f < sizeof(frames) / sizeof(*frames); f++) {
		size_t n = total / frames[f];

		for (unsigned c = REP_C_CHACHA; c <= REP_C_AESGCM; c++) {
			double os = 0, oo = 0, ss = 0, so = 0;

			if (c == REP_C_AESGCM && !aes)
				continue;
			for (int r = 0; r < 3; r++) {
				ours(c, buf, frames[f], n, &os, &oo);
				sodium(c, buf, frames[f], n, &ss, &so);
			}
			printf("  %4zu KiB %-17s OpenSSL seal %6.0f open %6.0f   libsodium%s seal "
			       "%6.0f open %6.0f   %.1fx\n", frames[f] >> 10, rep_cipher_name(c),
			       os, oo, c == REP_C_AESGCM ? "" : " (xchacha)", ss, so,
			       (os + oo) / (ss + so));
		}
	}
	free(buf);
	return 0;
}
