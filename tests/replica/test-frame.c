/*
 * test-frame.c — the wire format's checks and the handshake's proof, without sockets:
 * rep_frame_check refuses each malformed header, rep_hello_parse each malformed HELLO,
 * a MAC is bound to the key, the role of its maker and every HELLO byte, and a sealed frame
 * opens once, in order, unchanged, under its own direction's and connection's key.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stddef.h>

#include "replica_i.h"
#include "rtest.h"

static void test_frame_check(void)
{
	struct rep_hdr good, h;
	char why[128], pay[16] = "payload";
	struct iovec iov = { pay, sizeof(pay) };

	rep_frame_fill(&good, REP_K_MSG, REP_TYPE_USER, 7, &iov, 1, sizeof(pay));
	CHECK_EQ(rep_frame_check(&good, why, sizeof(why)), 0);
	CHECK_EQ(rep_frame_sum_ok(&good, pay), 0);
	pay[0] ^= 1;
	CHECK_EQ(rep_frame_sum_ok(&good, pay), -EBADMSG);
	/* each field wrong in turn */
	h = good, h.magic ^= 1;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	CHECK(strstr(why, "magic"));
	h = good, h.version = REP_VERSION - 1; /* version 1 had no sealed frames */
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.flags = 4;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.flags = REP_F_SEALED; /* sealed frames: the reader opens them */
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), 0);
	h = good, h.flags = REP_F_SEALED | REP_F_REKEY;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), 0);
	h = good, h.flags = REP_F_REKEY; /* a rekey of a frame that is not sealed */
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.kind = 0;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.kind = REP_K_MAX;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.len = REP_PAYLOAD_MAX + 1;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	CHECK(strstr(why, "more than"));
	h = good, h.len = REP_PAYLOAD_MAX;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), 0);
	h = good, h.len = 0xffffffffu;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.type = REP_TYPE_USER - 1; /* the link's own types never come as MSG */
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.seq = 0;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	/* a seq whose successor would wrap (the reader's next expected seq) */
	h = good, h.seq = REP_SEQ_MAX;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), 0);
	h = good, h.seq = REP_SEQ_MAX + 1;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	h = good, h.seq = UINT64_MAX;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	/* control frames: small, fixed, no type or seq */
	rep_frame_fill(&h, REP_K_HB, 0, 0, NULL, 0, 0);
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), 0);
	h.len = 1;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	rep_frame_fill(&h, REP_K_HB, 0, 5, NULL, 0, 0);
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	rep_frame_fill(&h, REP_K_AUTH, 0, 0, &iov, 1, REP_MAC_BYTES);
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), 0);
	h.len = REP_MAC_BYTES - 1;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	rep_frame_fill(&h, REP_K_ACK, 0, 0, NULL, 0, 0);
	h.len = sizeof(struct rep_ack) + (REP_ACK_MAX_ENTS + 1) * sizeof(struct rep_ack_ent);
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	rep_frame_fill(&h, REP_K_HELLO, 0, 0, NULL, 0, 0);
	h.len = sizeof(struct rep_hello) + 1;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	/* the handshake is never sealed */
	rep_frame_fill(&h, REP_K_HELLO, 0, 0, NULL, 0, 0);
	h.flags = REP_F_SEALED;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
	rep_frame_fill(&h, REP_K_AUTH, 0, 0, &iov, 1, REP_MAC_BYTES);
	h.flags = REP_F_SEALED;
	CHECK_EQ(rep_frame_check(&h, why, sizeof(why)), -EBADMSG);
done:
	return;
}

/* MSG seqs: the first at or after the HELLO's, then one by one, never past REP_SEQ_MAX. */
static void test_seq(void)
{
	uint64_t next = 0;
	char why[128];

	CHECK_EQ(rep_msg_seq_check(10, &next, 9, why, sizeof(why)), -EBADMSG);
	CHECK(next == 0 && strstr(why, "out of order"));
	CHECK_EQ(rep_msg_seq_check(10, &next, 12, why, sizeof(why)), 0); /* a gap first: ok */
	CHECK_EQ(next, 13);
	CHECK_EQ(rep_msg_seq_check(10, &next, 13, why, sizeof(why)), 0);
	CHECK_EQ(rep_msg_seq_check(10, &next, 13, why, sizeof(why)), -EBADMSG); /* again */
	CHECK_EQ(rep_msg_seq_check(10, &next, 15, why, sizeof(why)), -EBADMSG); /* a gap */
	CHECK_EQ(next, 14);
	next = 0;
	CHECK_EQ(rep_msg_seq_check(1, &next, REP_SEQ_MAX + 1, why, sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_msg_seq_check(1, &next, UINT64_MAX, why, sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_msg_seq_check(1, &next, REP_SEQ_MAX, why, sizeof(why)), 0);
	CHECK(next == REP_SEQ_MAX + 1); /* and no further: the next is past REP_SEQ_MAX */
	CHECK_EQ(rep_msg_seq_check(1, &next, REP_SEQ_MAX + 1, why, sizeof(why)), -EBADMSG);
done:
	return;
}

/* An ACK payload of n entries: seq[i], status[i]. */
static size_t ack_make(unsigned char *buf, uint64_t upto, unsigned n, const uint64_t *seq,
		       const int32_t *st)
{
	struct rep_ack a = { .upto = upto, .n = n };

	memcpy(buf, &a, sizeof(a));
	for (unsigned i = 0; i < n; i++) {
		struct rep_ack_ent e = { .seq = seq[i], .status = st[i] };

		memcpy(buf + sizeof(a) + i * sizeof(e), &e, sizeof(e));
	}
	return sizeof(a) + n * sizeof(struct rep_ack_ent);
}

/* rep_ack_parse: what may be acknowledged is acked + 1 .. sent; statuses are errnos. */
static void test_ack(void)
{
	static struct rep_ack_parsed out;
	unsigned char buf[sizeof(struct rep_ack) + (REP_ACK_MAX_ENTS + 1) * sizeof(struct rep_ack_ent)];
	uint64_t seq[2] = { 12, 14 };
	int32_t st[2] = { -EIO, -ENOSPC };
	char why[128];
	size_t len;

	len = ack_make(buf, 15, 2, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 10, 20, &out, why, sizeof(why)), 0);
	CHECK(out.upto == 15 && out.n == 2 && out.ent[1].seq == 14 && out.ent[1].status == -ENOSPC);
	len = ack_make(buf, 15, 0, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 14, 15, &out, why, sizeof(why)), 0);
	/* short, a length that disagrees with n, too many entries, padding */
	CHECK_EQ(rep_ack_parse(buf, len - 1, 14, 15, &out, why, sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_ack_parse(buf, len + sizeof(struct rep_ack_ent), 14, 15, &out, why,
			       sizeof(why)), -EBADMSG);
	((struct rep_ack *)buf)->n = REP_ACK_MAX_ENTS + 1;
	CHECK_EQ(rep_ack_parse(buf, sizeof(buf), 0, 1000, &out, why, sizeof(why)), -EBADMSG);
	len = ack_make(buf, 15, 0, seq, st);
	((struct rep_ack *)buf)->pad = 1;
	CHECK_EQ(rep_ack_parse(buf, len, 14, 15, &out, why, sizeof(why)), -EBADMSG);
	/* upto: nothing new, a seq never sent (from the future) */
	len = ack_make(buf, 15, 2, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 15, 20, &out, why, sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_ack_parse(buf, len, 10, 14, &out, why, sizeof(why)), -EBADMSG);
	CHECK(strstr(why, "outside"));
	/* entries: already acknowledged, past upto, out of order, repeated */
	CHECK_EQ(rep_ack_parse(buf, len, 12, 20, &out, why, sizeof(why)), -EBADMSG);
	seq[1] = 16;
	len = ack_make(buf, 15, 2, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 10, 20, &out, why, sizeof(why)), -EBADMSG);
	seq[0] = 14, seq[1] = 13;
	len = ack_make(buf, 15, 2, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 10, 20, &out, why, sizeof(why)), -EBADMSG);
	seq[0] = seq[1] = 13;
	len = ack_make(buf, 15, 2, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 10, 20, &out, why, sizeof(why)), -EBADMSG);
	/* statuses: 0 and positive are not listed, nor what is no errno */
	seq[0] = 12, seq[1] = 14;
	for (unsigned i = 0; i < 5; i++) {
		int32_t bad[5] = { 0, 5, -REP_ERRNO_MAX - 1, -4095, INT32_MIN };

		st[1] = bad[i];
		len = ack_make(buf, 15, 2, seq, st);
		CHECK_EQ(rep_ack_parse(buf, len, 10, 20, &out, why, sizeof(why)), -EBADMSG);
	}
	st[1] = -REP_ERRNO_MAX;
	len = ack_make(buf, 15, 2, seq, st);
	CHECK_EQ(rep_ack_parse(buf, len, 10, 20, &out, why, sizeof(why)), 0);
done:
	return;
}

static void test_hello(void)
{
	struct rep_hello mine, out, bad;
	size_t len;
	char why[128];

	rep_hello_make(&mine, &len, REP_ROLE_INITIATOR, "node-a", 77, 5, REP_HF_ENCRYPT);
	CHECK_EQ(len, REP_HELLO_FIXED + 6);
	CHECK_EQ(rep_hello_parse(&mine, len, REP_ROLE_INITIATOR, "node-b", &out, why, sizeof(why)), 0);
	CHECK(out.instance == 77 && out.next_seq == 5 && out.name_len == 6 &&
	      out.flags == REP_HF_ENCRYPT);
	bad = mine, bad.flags = 4; /* a flag this version does not know */
	CHECK_EQ(rep_hello_parse(&bad, len, REP_ROLE_INITIATOR, "node-b", &out, why, sizeof(why)),
		 -EBADMSG);
	CHECK(!memcmp(out.name, "node-a", 6));
	/* wrong role, our own name, a length that disagrees with name_len, a bad byte */
	CHECK_EQ(rep_hello_parse(&mine, len, REP_ROLE_ACCEPTOR, "node-b", &out, why, sizeof(why)),
		 -EBADMSG);
	CHECK_EQ(rep_hello_parse(&mine, len, REP_ROLE_INITIATOR, "node-a", &out, why, sizeof(why)),
		 -ENOTUNIQ); /* a configuration error, kept for the status (rep_stats) */
	CHECK(strstr(why, "own node name"));
	CHECK_EQ(rep_hello_parse(&mine, len - 1, REP_ROLE_INITIATOR, "node-b", &out, why,
				 sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_hello_parse(&mine, REP_HELLO_FIXED, REP_ROLE_INITIATOR, "node-b", &out, why,
				 sizeof(why)), -EBADMSG);
	bad = mine, bad.name[2] = '\n';
	CHECK_EQ(rep_hello_parse(&bad, len, REP_ROLE_INITIATOR, "node-b", &out, why, sizeof(why)),
		 -EBADMSG);
	bad = mine, bad.next_seq = 0;
	CHECK_EQ(rep_hello_parse(&bad, len, REP_ROLE_INITIATOR, "node-b", &out, why, sizeof(why)),
		 -EBADMSG);
	bad = mine, bad.next_seq = UINT64_MAX;
	CHECK_EQ(rep_hello_parse(&bad, len, REP_ROLE_INITIATOR, "node-b", &out, why, sizeof(why)),
		 -EBADMSG);
	bad = mine, bad.proto = REP_VERSION + 1;
	CHECK_EQ(rep_hello_parse(&bad, len, REP_ROLE_INITIATOR, "node-b", &out, why, sizeof(why)),
		 -EBADMSG);
	/* two HELLOs never carry the same nonce */
	rep_hello_make(&bad, &len, REP_ROLE_INITIATOR, "node-a", 77, 5, REP_HF_ENCRYPT);
	CHECK(memcmp(bad.nonce, mine.nonce, REP_NONCE_BYTES));
done:
	return;
}

static void test_mac(void)
{
	uint8_t key[REP_KEY_BYTES], other[REP_KEY_BYTES], mac[REP_MAC_BYTES];
	struct rep_hello hi, ha;
	size_t li, la;

	randombytes_buf(key, sizeof(key));
	memcpy(other, key, sizeof(key));
	other[0] ^= 1;
	rep_hello_make(&hi, &li, REP_ROLE_INITIATOR, "a", 1, 1, REP_HF_ALL);
	rep_hello_make(&ha, &la, REP_ROLE_ACCEPTOR, "b", 2, 1, REP_HF_ALL);
	rep_auth_mac(mac, key, REP_ROLE_INITIATOR, &hi, li, &ha, la);
	CHECK_EQ(rep_auth_verify(mac, key, REP_ROLE_INITIATOR, &hi, li, &ha, la), 0);
	/* another key, the other role (a reflected MAC), either HELLO changed in one bit */
	CHECK_EQ(rep_auth_verify(mac, other, REP_ROLE_INITIATOR, &hi, li, &ha, la), -EACCES);
	CHECK_EQ(rep_auth_verify(mac, key, REP_ROLE_ACCEPTOR, &hi, li, &ha, la), -EACCES);
	CHECK_EQ(rep_auth_verify(mac, key, REP_ROLE_INITIATOR, &ha, la, &hi, li), -EACCES);
	hi.nonce[5] ^= 0x10;
	CHECK_EQ(rep_auth_verify(mac, key, REP_ROLE_INITIATOR, &hi, li, &ha, la), -EACCES);
	hi.nonce[5] ^= 0x10;
	ha.name[0] = 'c';
	CHECK_EQ(rep_auth_verify(mac, key, REP_ROLE_INITIATOR, &hi, li, &ha, la), -EACCES);
done:
	return;
}

/* Seal frames one way and open them the other: each frame opens once, in order, under
 * the key of its direction and connection; one bit changed anywhere (payload, tag, any
 * header field), a replay, a frame left out, or a forged rekey mark: it does not open. */
static void seal_one(unsigned cipher)
{
	uint8_t key[REP_KEY_BYTES];
	struct rep_hello hi, ha, hi2;
	struct rep_dir i2a = { 0 }, a2i = { 0 }, ri2a = { 0 }, ra2i = { 0 }, o2 = { 0 }, save = { 0 },
		       before;
	uint8_t old_key[REP_KEY_BYTES];
	size_t li, la, li2;
	unsigned char buf[3][64 + REP_TAG_BYTES], tmp[64 + REP_TAG_BYTES], replay[64 + REP_TAG_BYTES];
	const char text[] = "the marker: sealed-payload-42";
	struct rep_hdr h[3], t;
	struct iovec iov[2] = { { (void *)text, 10 }, { (void *)(text + 10), sizeof(text) - 10 } };
	char why[160];

	randombytes_buf(key, sizeof(key));
	rep_hello_make(&hi, &li, REP_ROLE_INITIATOR, "a", 1, 1, REP_HF_ALL);
	rep_hello_make(&ha, &la, REP_ROLE_ACCEPTOR, "b", 2, 1, REP_HF_ALL);
	CHECK_EQ(rep_session_keys(&i2a, &a2i, cipher, key, &hi, li, &ha, la), 0);
	CHECK_EQ(rep_session_keys(&ri2a, &ra2i, cipher, key, &hi, li, &ha, la), 0);
	CHECK(memcmp(i2a.key, a2i.key, REP_KEY_BYTES)); /* a key per direction */
	for (int k = 0; k < 3; k++) {
		rep_frame_fill(&h[k], REP_K_MSG, REP_TYPE_USER, (uint64_t)k + 1, NULL, 0,
			       sizeof(text));
		CHECK_EQ(rep_sealv(&i2a, REP_REKEY_BYTES, &h[k], buf[k], iov, 2), 0);
		CHECK(h[k].flags == REP_F_SEALED && !h[k].sum);
		CHECK(!memmem(buf[k], sizeof(text), "marker", 6)); /* not in the clear */
	}
	/* the other direction's key, another connection's keys (a new nonce): no */
	memcpy(tmp, buf[0], sizeof(tmp));
	before = ra2i;
	CHECK_EQ(rep_open(&ra2i, &h[0], tmp, why, sizeof(why)), -EBADMSG);
	CHECK(!memcmp(&before, &ra2i, sizeof(before))); /* a failure leaves the key as it was */
	rep_hello_make(&hi2, &li2, REP_ROLE_INITIATOR, "a", 1, 1, REP_HF_ALL);
	CHECK_EQ(rep_session_keys(&o2, &save, cipher, key, &hi2, li2, &ha, la), 0);
	memcpy(tmp, buf[0], sizeof(tmp));
	CHECK_EQ(rep_open(&o2, &h[0], tmp, why, sizeof(why)), -EBADMSG);
	/* one bit in the payload, in the tag, in each header field */
	for (size_t bit = 0; bit < (sizeof(text) + REP_TAG_BYTES) * 8; bit += 7) {
		memcpy(tmp, buf[0], sizeof(tmp));
		tmp[bit / 8] ^= (unsigned char)(1u << bit % 8);
		CHECK_EQ(rep_open(&ri2a, &h[0], tmp, why, sizeof(why)), -EBADMSG);
	}
	for (size_t bit = 0; bit < sizeof(t) * 8; bit++) {
		/* (len: one less, which stays inside the buffer; the reader reads len + tag) */
		if (bit / 8 >= offsetof(struct rep_hdr, len) &&
		    bit / 8 < offsetof(struct rep_hdr, len) + sizeof(t.len))
			continue;
		t = h[0];
		((unsigned char *)&t)[bit / 8] ^= (unsigned char)(1u << bit % 8);
		memcpy(tmp, buf[0], sizeof(tmp));
		CHECK_EQ(rep_open(&ri2a, &t, tmp, why, sizeof(why)), -EBADMSG);
	}
	t = h[0];
	t.len--;
	memcpy(tmp, buf[0], sizeof(tmp));
	CHECK_EQ(rep_open(&ri2a, &t, tmp, why, sizeof(why)), -EBADMSG);
	CHECK(strstr(why, "failed to authenticate"));
	/* the second frame before the first (the first dropped on the way): no */
	memcpy(tmp, buf[1], sizeof(tmp));
	CHECK_EQ(rep_open(&ri2a, &h[1], tmp, why, sizeof(why)), -EBADMSG);
	/* in order: yes, and the text is back */
	memcpy(replay, buf[0], sizeof(replay));
	CHECK_EQ(rep_open(&ri2a, &h[0], buf[0], why, sizeof(why)), 0);
	CHECK(!memcmp(buf[0], text, sizeof(text)));
	/* the first again (a replay): no; the second: yes */
	CHECK_EQ(rep_open(&ri2a, &h[0], replay, why, sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_open(&ri2a, &h[1], buf[1], why, sizeof(why)), 0);
	/* a rekey mark forged onto the third: no; the real third: yes */
	t = h[2];
	t.flags |= REP_F_REKEY;
	memcpy(tmp, buf[2], sizeof(tmp));
	before = ri2a;
	CHECK_EQ(rep_open(&ri2a, &t, tmp, why, sizeof(why)), -EBADMSG);
	CHECK(!memcmp(&before, &ri2a, sizeof(before))); /* back on the old key */
	CHECK_EQ(rep_open(&ri2a, &h[2], buf[2], why, sizeof(why)), 0);
	/* a rekey: past the byte limit the sender ratchets, marks the frame, and the
	 * receiver follows; the old key no longer opens what comes after */
	memcpy(buf[0], text, sizeof(text));
	rep_frame_fill(&h[0], REP_K_ACK, 0, 0, NULL, 0, sizeof(text));
	memcpy(old_key, ri2a.key, sizeof(old_key));
	CHECK_EQ(rep_seal(&i2a, 2 * sizeof(text), &h[0], buf[0], buf[0]), 1);
	CHECK(h[0].flags == (REP_F_SEALED | REP_F_REKEY) && i2a.ctr == 1);
	memcpy(tmp, buf[0], sizeof(tmp));
	t = h[0];
	t.flags = REP_F_SEALED; /* the mark taken off: the old key does not open it */
	CHECK_EQ(rep_open(&ri2a, &t, tmp, why, sizeof(why)), -EBADMSG);
	CHECK_EQ(rep_open(&ri2a, &h[0], buf[0], why, sizeof(why)), 1);
	CHECK(!memcmp(buf[0], text, sizeof(text)) && ri2a.ctr == 1);
	CHECK(memcmp(old_key, ri2a.key, REP_KEY_BYTES));
	/* a sealed frame read as plaintext, a plaintext one read as sealed */
	rep_frame_fill(&t, REP_K_HB, 0, 0, NULL, 0, 0);
	CHECK_EQ(rep_open(&ri2a, &t, tmp, why, sizeof(why)), -EBADMSG);
	CHECK(strstr(why, "not sealed"));
done:
	rep_dir_wipe(&i2a);
	rep_dir_wipe(&a2i);
	rep_dir_wipe(&ri2a);
	rep_dir_wipe(&ra2i);
	rep_dir_wipe(&o2);
	rep_dir_wipe(&save);
}

static void test_seal(void)
{
	seal_one(REP_C_CHACHA);
	if (crypto_aead_aes256gcm_is_available())
		seal_one(REP_C_AESGCM);
	/* what two HELLOs agree on */
	CHECK_EQ(rep_cipher_pick(0, 0), REP_C_NONE);
	CHECK_EQ(rep_cipher_pick(REP_HF_ENCRYPT, 0), -1);
	CHECK_EQ(rep_cipher_pick(0, REP_HF_ALL), -1);
	CHECK_EQ(rep_cipher_pick(REP_HF_ENCRYPT, REP_HF_ALL), REP_C_CHACHA);
	CHECK_EQ(rep_cipher_pick(REP_HF_ALL, REP_HF_ALL), REP_C_AESGCM);
done:
	return;
}

static void test_addr(void)
{
	struct sockaddr_in sa;

	CHECK_EQ(rep_addr_parse("127.0.0.1:7410", &sa), 0);
	CHECK(sa.sin_family == AF_INET && ntohs(sa.sin_port) == 7410 &&
	      ntohl(sa.sin_addr.s_addr) == INADDR_LOOPBACK);
	CHECK_EQ(rep_addr_parse("0.0.0.0:0", &sa), 0);
	CHECK_EQ(rep_addr_parse("localhost:1", &sa), 0);
	CHECK(ntohl(sa.sin_addr.s_addr) >> 24 == 127);
	CHECK_EQ(rep_addr_parse("127.0.0.1", &sa), -EINVAL);
	CHECK_EQ(rep_addr_parse(":7410", &sa), -EINVAL);
	CHECK_EQ(rep_addr_parse("127.0.0.1:", &sa), -EINVAL);
	CHECK_EQ(rep_addr_parse("127.0.0.1:65536", &sa), -EINVAL);
	CHECK_EQ(rep_addr_parse("127.0.0.1:74x", &sa), -EINVAL);
	CHECK_EQ(rep_addr_parse("127.0.0.1:-1", &sa), -EINVAL);
	CHECK_EQ(rep_addr_parse(NULL, &sa), -EINVAL);
done:
	return;
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	RUN(test_frame_check);
	RUN(test_hello);
	RUN(test_seq);
	RUN(test_ack);
	RUN(test_mac);
	RUN(test_seal);
	RUN(test_addr);
	return rt_failed != 0;
}
