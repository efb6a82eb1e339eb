/*
 * auth.c — the shared secret and the handshake's proof (libsodium).
 *
 * How: the key is crypto_generichash (BLAKE2b, 32 bytes) of the whole secret file, so any
 * text works; a file anyone but its owner may read is refused, like ssh refuses such a
 * private key, and so is one owned by another user than the one reading it (who could
 * replace it).  The handshake (link.c runs it) is: the initiator sends HELLO (name,
 * random instance, first seq, flags, a fresh 32-byte nonce), the acceptor answers with
 * its own HELLO, the initiator sends AUTH = crypto_auth(key, context | its role | HELLO_i
 * | HELLO_a); only when that checks (crypto_auth_verify) does the acceptor send its own
 * AUTH (else an all-zero one: a refusal that reveals nothing), which the initiator
 * checks.  Both nonces and both names are inside both HELLOs, so a MAC proves the secret
 * for this connection only (a recorded handshake replayed meets a fresh nonce); the role
 * byte keeps a MAC from being reflected back to its maker, and a peer that claims our
 * own name is refused before any MAC is computed.  The session keys (seal.c) come from
 * the same transcript.
 *
 * Locking: none (pure functions; libsodium is thread-safe after sodium_init()).
 */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "replica_i.h"

_Static_assert(REP_KEY_BYTES == crypto_auth_KEYBYTES, "key size");
_Static_assert(REP_MAC_BYTES == crypto_auth_BYTES, "mac size");
_Static_assert(REP_KEY_BYTES >= crypto_generichash_BYTES_MIN &&
	       REP_KEY_BYTES <= crypto_generichash_BYTES_MAX, "hash size");

static const char ctx[] = "heapfs replica auth v1";

int rep_secret_load(const char *path, uint8_t key[REP_KEY_BYTES], char *why, size_t whylen)
{
	crypto_generichash_state st;
	unsigned char buf[4096];
	uint64_t total = 0;
	struct stat sb;
	int fd, err;

	if (sodium_init() < 0) {
		snprintf(why, whylen, "libsodium failed to initialise");
		return -EIO;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		err = -errno;
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return err;
	}
	if (fstat(fd, &sb) < 0) {
		err = -errno;
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		err = -EPERM;
		snprintf(why, whylen, "%s: not a regular file", path);
		goto out;
	}
	if (sb.st_uid != geteuid()) {
		err = -EPERM;
		snprintf(why, whylen, "%s: owned by uid %u, not by uid %u that runs heapfs "
			 "(chown it)", path, (unsigned)sb.st_uid, (unsigned)geteuid());
		goto out;
	}
	if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
		err = -EPERM;
		snprintf(why, whylen,
			 "%s: mode %04o gives group or others access to the secret (chmod 600)",
			 path, (unsigned)(sb.st_mode & 07777));
		goto out;
	}
	crypto_generichash_init(&st, NULL, 0, REP_KEY_BYTES);
	for (;;) {
		ssize_t got = read(fd, buf, sizeof(buf));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err = -errno;
			snprintf(why, whylen, "%s: %s", path, strerror(errno));
			goto wipe;
		}
		if (!got)
			break;
		crypto_generichash_update(&st, buf, (size_t)got);
		total += (uint64_t)got;
	}
	if (!total) {
		err = -EINVAL;
		snprintf(why, whylen, "%s: empty secret file", path);
		goto wipe;
	}
	crypto_generichash_final(&st, key, REP_KEY_BYTES);
	err = 0;
wipe:
	sodium_memzero(buf, sizeof(buf));
	sodium_memzero(&st, sizeof(st));
out:
	close(fd);
	return err;
}

void rep_hello_make(struct rep_hello *h, size_t *len, unsigned role, const char *node,
		    uint64_t instance, uint64_t next_seq, unsigned flags)
{
	size_t n = strnlen(node, REP_NODE_MAX);

	memset(h, 0, sizeof(*h));
	h->proto = REP_VERSION;
	h->role = (uint8_t)role;
	h->name_len = (uint8_t)n;
	h->flags = (uint16_t)flags;
	h->instance = instance;
	h->next_seq = next_seq;
	randombytes_buf(h->nonce, sizeof(h->nonce));
	memcpy(h->name, node, n);
	*len = REP_HELLO_FIXED + n;
}

int rep_hello_parse(const void *p, size_t len, unsigned want_role, const char *own,
		    struct rep_hello *out, char *why, size_t whylen)
{
	if (len < REP_HELLO_FIXED + 1 || len > sizeof(*out)) {
		snprintf(why, whylen, "hello of %zu bytes", len);
		return -EBADMSG;
	}
	memset(out, 0, sizeof(*out));
	memcpy(out, p, len);
	if (out->proto != REP_VERSION || out->role != want_role || (out->flags & ~REP_HF_ALL) ||
	    REP_HELLO_FIXED + out->name_len != len || !out->next_seq ||
	    out->next_seq > REP_SEQ_MAX) {
		snprintf(why, whylen, "malformed hello (proto %u role %u)", out->proto, out->role);
		return -EBADMSG;
	}
	for (unsigned i = 0; i < out->name_len; i++)
		if ((unsigned char)out->name[i] < 0x21 || (unsigned char)out->name[i] > 0x7e) {
			snprintf(why, whylen, "hello: node name with byte 0x%02x",
				 (unsigned char)out->name[i]);
			return -EBADMSG;
		}
	if (strnlen(own, REP_NODE_MAX) == out->name_len &&
	    !memcmp(own, out->name, out->name_len)) {
		snprintf(why, whylen, "peer claims our own node name \"%s\" (both configs say "
			 "node = \"%s\")", own, own);
		return -ENOTUNIQ; /* a configuration, not a frame, is wrong */
	}
	return 0;
}

void rep_auth_mac(uint8_t mac[REP_MAC_BYTES], const uint8_t key[REP_KEY_BYTES], unsigned role,
		  const void *hello_i, size_t len_i, const void *hello_a, size_t len_a)
{
	crypto_auth_hmacsha512256_state st;
	uint8_t r = (uint8_t)role;
	uint32_t li = (uint32_t)len_i;

	/* crypto_auth is HMAC-SHA-512-256; its streaming form saves gathering the input */
	crypto_auth_hmacsha512256_init(&st, key, REP_KEY_BYTES);
	crypto_auth_hmacsha512256_update(&st, (const unsigned char *)ctx, sizeof(ctx));
	crypto_auth_hmacsha512256_update(&st, &r, 1);
	crypto_auth_hmacsha512256_update(&st, (const unsigned char *)&li, sizeof(li));
	crypto_auth_hmacsha512256_update(&st, hello_i, len_i);
	crypto_auth_hmacsha512256_update(&st, hello_a, len_a);
	crypto_auth_hmacsha512256_final(&st, mac);
	sodium_memzero(&st, sizeof(st));
}

bool rep_auth_is_refusal(const uint8_t mac[REP_MAC_BYTES])
{
	return sodium_is_zero(mac, REP_MAC_BYTES);
}

int rep_auth_verify(const uint8_t mac[REP_MAC_BYTES], const uint8_t key[REP_KEY_BYTES],
		    unsigned role, const void *hello_i, size_t len_i, const void *hello_a,
		    size_t len_a)
{
	uint8_t want[REP_MAC_BYTES];
	int ok;

	rep_auth_mac(want, key, role, hello_i, len_i, hello_a, len_a);
	ok = crypto_verify_32(want, mac) == 0;
	sodium_memzero(want, sizeof(want));
	return ok ? 0 : -EACCES;
}
