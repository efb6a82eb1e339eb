/*
 * replay.c — main() for a libFuzzer harness built without libFuzzer (gcc, `make test`):
 * feeds every file named on the command line, or found in a directory named there, to
 * LLVMFuzzerTestOneInput once.  The regression run of each committed corpus; the
 * sanitizer build turns any memory error into a failed test.
 * No locking: single-threaded.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long n;
	int ret = -1;

	if (!f)
		goto out;
	if (fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
		goto close;
	/* a private copy of exactly n bytes, so ASan sees any read past the input */
	buf = malloc(n ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
		goto close;
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	ret = 0;
close:
	fclose(f);
out:
	free(buf);
	if (ret)
		perror(path);
	return ret;
}

static int run_path(const char *path, unsigned *count)
{
	struct stat st;
	struct dirent **ents;
	int n, i, ret = 0;

	if (stat(path, &st)) {
		perror(path);
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		(*count)++;
		return run_file(path);
	}
	n = scandir(path, &ents, NULL, alphasort); /* a stable order: a failure repeats */
	if (n < 0) {
		perror(path);
		return -1;
	}
	for (i = 0; i < n; i++) {
		char sub[4096];

		if (ents[i]->d_name[0] != '.' &&
		    snprintf(sub, sizeof(sub), "%s/%s", path, ents[i]->d_name) < (int)sizeof(sub) &&
		    run_path(sub, count))
			ret = -1;
		free(ents[i]);
	}
	free(ents);
	return ret;
}

int main(int argc, char **argv)
{
	unsigned count = 0;
	int i, ret = 0;

	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	for (i = 1; i < argc; i++)
		if (run_path(argv[i], &count))
			ret = 1;
	printf("%u inputs replayed\n", count);
	if (!count) /* an empty corpus tests nothing */
		ret = 1;
	return ret;
}
