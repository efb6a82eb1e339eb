/*
 * conf-options.c — prints every option the config parser accepts, one "SECTION OPTION"
 * line each ("-" for the top level), from the parser's own schema (conf_each_option):
 * tests/fs/test_manual.py checks that heapfs.conf(5) documents each one.
 * No locking: single-threaded.
 */
#include <stdio.h>

#include "conf.h"

static void print(const char *section, const char *option, void *arg)
{
	(void)arg;
	printf("%s %s\n", *section ? section : "-", option);
}

int main(void)
{
	conf_each_option(print, NULL);
	return 0;
}
