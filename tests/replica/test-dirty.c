/*
 * test-dirty.c — the resync bitmap (rep_dirty_*) and the secret file (rep_secret_load).
 */
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rtest.h"

static void test_dirty_basic(void)
{
	struct rep_dirty *d = NULL;
	uint64_t off = 0, len = 0;

	CHECK_EQ(rep_dirty_new(0, 16, &d), -EINVAL);
	CHECK_EQ(rep_dirty_new(1 << 20, 5, &d), -EINVAL);
	/* 1 MiB + 100 bytes in 64 KiB regions: 17 regions, the last 100 bytes long */
	CHECK_EQ(rep_dirty_new((1 << 20) + 100, 16, &d), 0);
	CHECK_EQ(rep_dirty_bytes(d), 0);
	CHECK_EQ(rep_dirty_next(d, &off, &len), 0);
	rep_dirty_set(d, 0, 0); /* empty: nothing */
	rep_dirty_set(d, 5 << 20, 10); /* past the end: nothing */
	CHECK_EQ(rep_dirty_bytes(d), 0);
	rep_dirty_set(d, 65535, 2); /* straddles regions 0 and 1 */
	CHECK_EQ(rep_dirty_bytes(d), 2 << 16);
	off = 0;
	CHECK_EQ(rep_dirty_next(d, &off, &len), 1);
	CHECK_EQ(off, 0);
	CHECK_EQ(len, 1 << 16);
	off += len;
	CHECK_EQ(rep_dirty_next(d, &off, &len), 1);
	CHECK_EQ(off, 1 << 16);
	off += len;
	CHECK_EQ(rep_dirty_next(d, &off, &len), 0);
	/* the last, short region */
	rep_dirty_set(d, (1 << 20) + 99, 1000);
	CHECK_EQ(rep_dirty_bytes(d), (2 << 16) + 100);
	off = 2 << 16;
	CHECK_EQ(rep_dirty_next(d, &off, &len), 1);
	CHECK_EQ(off, 1 << 20);
	CHECK_EQ(len, 100);
	/* clearing a region's part clears the region */
	rep_dirty_clear(d, 1, 1);
	CHECK_EQ(rep_dirty_bytes(d), (1 << 16) + 100);
	rep_dirty_clear(d, 0, (2 << 20));
	CHECK_EQ(rep_dirty_bytes(d), 0);
	off = 0;
	CHECK_EQ(rep_dirty_next(d, &off, &len), 0);
done:
	rep_dirty_free(d);
}

/* Set ranges across word boundaries and compare with a plain array of bools. */
static void test_dirty_model(void)
{
	enum { NR = 1000 };
	struct rep_dirty *d = NULL;
	bool model[NR] = { 0 };
	uint64_t off, len, n;

	CHECK_EQ(rep_dirty_new((uint64_t)NR << 12, 12, &d), 0);
	for (int i = 0; i < 3000; i++) {
		uint64_t a = randombytes_uniform(NR << 12), l = randombytes_uniform(300 << 12);
		bool set = randombytes_uniform(3) != 0;

		if (set)
			rep_dirty_set(d, a, l);
		else
			rep_dirty_clear(d, a, l);
		for (uint64_t r = a >> 12; l && r < NR && (r << 12) < a + l; r++)
			model[r] = set;
		if (i % 100)
			continue;
		n = 0;
		off = 0;
		while (rep_dirty_next(d, &off, &len)) {
			CHECK(model[off >> 12]);
			CHECK_EQ(len, 1 << 12);
			off += len;
			n++;
		}
		for (int r = 0; r < NR; r++)
			n -= model[r];
		CHECK_EQ(n, 0);
		n = 0;
		for (int r = 0; r < NR; r++)
			n += model[r];
		CHECK_EQ(rep_dirty_bytes(d), n << 12);
	}
done:
	rep_dirty_free(d);
}

static void test_secret(void)
{
	char dir[] = "/tmp/rep-secret-XXXXXX", path[64], why[256];
	uint8_t key[REP_KEY_BYTES], want[REP_KEY_BYTES];
	const char text[] = "correct horse battery staple\n";
	int fd;

	CHECK(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/secret", dir);
	fd = open(path, O_CREAT | O_WRONLY | O_EXCL, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, text, sizeof(text) - 1) == sizeof(text) - 1);
	close(fd);
	CHECK(!chmod(path, 0644));
	CHECK_EQ(rep_secret_load(path, key, why, sizeof(why)), -EPERM);
	CHECK(strstr(why, "0644"));
	CHECK(!chmod(path, 0640));
	CHECK_EQ(rep_secret_load(path, key, why, sizeof(why)), -EPERM);
	CHECK(!chmod(path, 0600));
	CHECK_EQ(rep_secret_load(path, key, why, sizeof(why)), 0);
	crypto_generichash(want, sizeof(want), (const unsigned char *)text, sizeof(text) - 1,
			   NULL, 0);
	CHECK(!memcmp(key, want, sizeof(key)));
	/* mode 0600 but another user's file (who could rewrite it): refused too.  (Giving a
	 * file away takes root, which the test suite runs as.) */
	if (!geteuid()) {
		CHECK(!chown(path, 65534, 65534));
		CHECK_EQ(rep_secret_load(path, key, why, sizeof(why)), -EPERM);
		CHECK(strstr(why, "owned by uid 65534, not by uid 0"));
		CHECK(!chown(path, 0, 0));
		CHECK_EQ(rep_secret_load(path, key, why, sizeof(why)), 0);
	}
	CHECK_EQ(rep_secret_load(dir, key, why, sizeof(why)), -EPERM); /* a directory */
	CHECK(!truncate(path, 0));
	CHECK_EQ(rep_secret_load(path, key, why, sizeof(why)), -EINVAL);
	CHECK_EQ(rep_secret_load("/nonexistent/secret", key, why, sizeof(why)), -ENOENT);
done:
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	RUN(test_dirty_basic);
	RUN(test_dirty_model);
	RUN(test_secret);
	return rt_failed != 0;
}
