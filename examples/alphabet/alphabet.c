/*
 * alphabet - the CIVIC example model.
 * Usage: alphabet <input_file> <output_file> [burn_seconds]
 *
 * CIVIC gives a model its duty's records as a JSON list of objects, and wants
 * back a JSON list with one result per record, in the same order. For
 * [{"letter": "a"}, {"letter": "z"}] it writes
 * [{"original_letter": "a", "letter": "b"}, {"original_letter": "z", "letter": "a"}]
 * "letter" is null if the record's letter is not a single ASCII letter.
 * After writing it burns CPU for burn_seconds (default 0.2, or
 * $ALPHABET_BURN_SECONDS) to act like a heavier model. Exit status: 0 ok; 1 bad
 * arguments or I/O error; 2 input is not a JSON list of objects (no output).
 */
#define _POSIX_C_SOURCE 199309L /* for clock_gettime */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Read a whole file into a NUL-terminated string (one duty's input: small). */
static char *read_all(FILE *f)
{
    char *buf = NULL, *bigger;
    size_t len = 0, cap = 0;

    while (!feof(f) && !ferror(f) && (bigger = realloc(buf, cap += 65536))) {
        buf = bigger;
        len += fread(buf + len, 1, cap - len - 1, f);
    }
    if (feof(f) && !ferror(f)) {
        buf[len] = '\0';
        return buf;
    }
    free(buf); /* read error or out of memory */
    return NULL;
}

/* Write one result. The original is copied only when it is printable ASCII
 * without escapes, so that the output is always valid JSON. */
static void write_result(FILE *out, int first, const char *s, int len)
{
    int plain = (s != NULL), i;
    char c = (plain && len == 1) ? s[0] : 0;

    for (i = 0; plain && i < len; i++)
        plain = s[i] >= ' ' && s[i] <= '~' && s[i] != '\\';
    fputs(first ? "[\n  " : ",\n  ", out); /* the first result opens the list */
    if (plain)
        fprintf(out, "{\"original_letter\": \"%.*s\", ", len, s);
    else
        fputs("{\"original_letter\": null, ", out);
    if (c >= 'a' && c <= 'z')
        fprintf(out, "\"letter\": \"%c\"}", 'a' + (c - 'a' + 1) % 26); /* z -> a */
    else if (c >= 'A' && c <= 'Z')
        fprintf(out, "\"letter\": \"%c\"}", 'A' + (c - 'A' + 1) % 26); /* Z -> A */
    else
        fputs("\"letter\": null}", out);
}

/* Walk the input, writing the results to out (out == NULL: only check it).
 * Depth 1 is inside the list, depth 2 inside a record; deeper values are
 * skipped by counting brackets. prev is the last non-space character ('"'
 * after a string). Returns -1 if the input is not a JSON list of objects. */
static int convert(const char *p, FILE *out)
{
    const char *val = NULL; /* the raw text of this record's "letter" */
    int depth = 0, n = 0, len = 0, is_letter = 0;
    char prev = 0;

    for (; *p; p++) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            continue;
        if (depth == 0 && (*p != '[' || prev)) /* one list, nothing after it */
            return -1;
        if (depth == 1 && !((*p == '{' && prev != '}') || (*p == ',' && prev == '}')
                            || (*p == ']' && prev != ',')))
            return -1; /* in the list: records separated by commas */
        if (*p == '"') {
            const char *s = p + 1;
            for (p++; *p != '"'; p++) /* a backslash escapes the next char: \" */
                if (*p == '\0' || (*p == '\\' && *++p == '\0'))
                    return -1;
            if (depth == 2 && (prev == '{' || prev == ',')) { /* a key */
                is_letter = (p - s == 6 && memcmp(s, "letter", 6) == 0);
            } else if (depth == 2 && is_letter) { /* the value of "letter" */
                val = s;
                len = (int)(p - s);
            }
        } else if (*p == '{' || *p == '[') {
            depth++;
        } else if ((*p == '}' || *p == ']') && --depth == 1) { /* end of a record */
            if (out)
                write_result(out, n == 0, val, len);
            n++;
            val = NULL;
        }
        prev = *p;
    }
    if (depth != 0 || prev != ']')
        return -1;
    if (out)
        fputs(n ? "\n]\n" : "[]\n", out);
    return 0;
}

static int fail(int status, const char *what, const char *why)
{
    fprintf(stderr, "alphabet: %s: %s\n", what, why);
    return status;
}

int main(int argc, char **argv)
{
    const char *burn_text = getenv("ALPHABET_BURN_SECONDS");
    double burn = 0.2;
    char *input, *rest;
    FILE *in, *out;
    struct timespec start, t;

    if (argc < 3 || argc > 4)
        return fail(1, "usage", "alphabet <input_file> <output_file> [burn_seconds]");
    if (argc == 4)
        burn_text = argv[3]; /* the argument wins over the environment */
    if (burn_text && *burn_text) {
        burn = strtod(burn_text, &rest);
        if (rest == burn_text || *rest != '\0' || !(burn >= 0)) /* !(>= 0): also NaN */
            return fail(1, burn_text, "bad burn_seconds");
    }
    if (!(in = fopen(argv[1], "rb")) || !(input = read_all(in)))
        return fail(1, argv[1], strerror(errno));
    fclose(in);
    /* Check all the input first, so that bad input leaves no output file. */
    if (convert(input, NULL) != 0)
        return fail(2, argv[1], "not a JSON list of objects");
    if (!(out = fopen(argv[2], "w")))
        return fail(1, argv[2], strerror(errno));
    convert(input, out);
    if (ferror(out) || fclose(out) != 0)
        return fail(1, argv[2], "write error");
    free(input);

    /* Simulate a heavier workload: spin on the clock (not sleep) to use CPU. */
    clock_gettime(CLOCK_MONOTONIC, &start);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while (t.tv_sec - start.tv_sec + (t.tv_nsec - start.tv_nsec) / 1e9 < burn);
    return 0;
}
