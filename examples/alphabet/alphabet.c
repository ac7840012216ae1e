/*
 * alphabet - the CIVIC example model.
 *
 * Usage: alphabet <input_file> <output_file> [burn_seconds]
 *
 * Reads a JSON list of records such as [{"letter": "a"}, {"letter": "b"}]
 * and writes a JSON list with one object per record, in the same order:
 *
 *     [{"original_letter": "a", "letter": "b"}, ...]
 *
 * "letter" is the next letter of the alphabet (z wraps to a, Z wraps to A),
 * or null when the record's letter is not a single ASCII letter (or is
 * missing, or is not a string; then "original_letter" is null too).
 *
 * After writing the output the program burns CPU for burn_seconds
 * (default 0.2, or $ALPHABET_BURN_SECONDS; the argument wins) to simulate
 * a heavier workload.
 *
 * Exit status: 0 success, 1 usage / I/O error (unreadable input,
 * unwritable output, out of memory), 2 malformed input JSON (no output
 * file is written in that case).
 *
 * Portable C99 + POSIX clock_gettime; libc only.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#define DEFAULT_BURN_SECONDS 0.2
#define MAX_BURN_SECONDS 86400.0
#define MAX_DEPTH 512

static const char *prog = "alphabet";

/* ------------------------------------------------------------------ */
/* Growable byte buffer                                                */
/* ------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} Buf;

static void die_oom(void)
{
    fprintf(stderr, "%s: out of memory\n", prog);
    exit(1);
}

static void buf_reserve(Buf *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (extra > (size_t)-1 - b->len)
        die_oom();
    need = b->len + extra;
    if (need <= b->cap)
        return;
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > (size_t)-1 / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    p = realloc(b->data, cap);
    if (!p)
        die_oom();
    b->data = p;
    b->cap = cap;
}

static void buf_put(Buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void buf_puts(Buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void buf_putc(Buf *b, char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

/* Append code point cp (assumed valid, non-surrogate) as UTF-8. */
static void buf_put_utf8(Buf *b, unsigned long cp)
{
    char tmp[4];
    size_t n;

    if (cp < 0x80) {
        tmp[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        tmp[0] = (char)(0xC0 | (cp >> 6));
        tmp[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        tmp[0] = (char)(0xE0 | (cp >> 12));
        tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        tmp[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        tmp[0] = (char)(0xF0 | (cp >> 18));
        tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        tmp[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_put(b, tmp, n);
}

/* ------------------------------------------------------------------ */
/* JSON scanner                                                        */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *start;
    const char *p;
    const char *end;
    char err[160];     /* first error message, empty if none */
    const char *errat; /* where the error was detected */
} Parser;

static int fail(Parser *ps, const char *fmt, ...)
{
    va_list ap;

    if (ps->err[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(ps->err, sizeof ps->err, fmt, ap);
        va_end(ap);
        ps->errat = ps->p;
    }
    return -1;
}

static void skip_ws(Parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            ps->p++;
        else
            break;
    }
}

static int peek(Parser *ps)
{
    return ps->p < ps->end ? (unsigned char)*ps->p : -1;
}

static int hex4(Parser *ps, unsigned long *out)
{
    unsigned long v = 0;
    int i;

    if (ps->end - ps->p < 4)
        return fail(ps, "truncated \\u escape");
    for (i = 0; i < 4; i++) {
        char c = ps->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned long)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned long)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned long)(c - 'A' + 10);
        else
            return fail(ps, "invalid \\u escape");
    }
    ps->p += 4;
    *out = v;
    return 0;
}

/*
 * Parse a JSON string starting at the opening quote. If out is non-NULL
 * the decoded bytes (UTF-8) are appended to it; otherwise the string is
 * only validated and skipped. Escaped quotes are handled correctly.
 */
static int parse_string(Parser *ps, Buf *out)
{
    if (peek(ps) != '"')
        return fail(ps, "expected a string");
    ps->p++;
    for (;;) {
        const char *run = ps->p;
        unsigned char c;

        /* copy a run of plain characters in one go */
        while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\'
               && (unsigned char)*ps->p >= 0x20)
            ps->p++;
        if (out)
            buf_put(out, run, (size_t)(ps->p - run));
        if (ps->p >= ps->end)
            return fail(ps, "unterminated string");
        c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            return 0;
        }
        if (c < 0x20)
            return fail(ps, "unescaped control character in string");

        /* backslash escape */
        ps->p++;
        if (ps->p >= ps->end)
            return fail(ps, "unterminated string");
        c = (unsigned char)*ps->p++;
        switch (c) {
        case '"':  if (out) buf_putc(out, '"');  break;
        case '\\': if (out) buf_putc(out, '\\'); break;
        case '/':  if (out) buf_putc(out, '/');  break;
        case 'b':  if (out) buf_putc(out, '\b'); break;
        case 'f':  if (out) buf_putc(out, '\f'); break;
        case 'n':  if (out) buf_putc(out, '\n'); break;
        case 'r':  if (out) buf_putc(out, '\r'); break;
        case 't':  if (out) buf_putc(out, '\t'); break;
        case 'u': {
            unsigned long cp, lo;
            if (hex4(ps, &cp) != 0)
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* high surrogate: combine with a following low one */
                if (ps->end - ps->p >= 6 && ps->p[0] == '\\'
                    && ps->p[1] == 'u') {
                    const char *save = ps->p;
                    ps->p += 2;
                    if (hex4(ps, &lo) != 0)
                        return -1;
                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else {
                        ps->p = save; /* re-read it as its own escape */
                        cp = 0xFFFD;
                    }
                } else {
                    cp = 0xFFFD;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD; /* lone low surrogate */
            }
            if (out)
                buf_put_utf8(out, cp);
            break;
        }
        default:
            ps->p--;
            return fail(ps, "invalid escape '\\%c' in string",
                        (c >= 0x20 && c < 0x7F) ? (char)c : '?');
        }
    }
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int parse_number(Parser *ps)
{
    if (peek(ps) == '-')
        ps->p++;
    if (peek(ps) == '0') {
        ps->p++;
    } else if (is_digit(peek(ps))) {
        while (is_digit(peek(ps)))
            ps->p++;
    } else {
        return fail(ps, "invalid number");
    }
    if (peek(ps) == '.') {
        ps->p++;
        if (!is_digit(peek(ps)))
            return fail(ps, "invalid number");
        while (is_digit(peek(ps)))
            ps->p++;
    }
    if (peek(ps) == 'e' || peek(ps) == 'E') {
        ps->p++;
        if (peek(ps) == '+' || peek(ps) == '-')
            ps->p++;
        if (!is_digit(peek(ps)))
            return fail(ps, "invalid number");
        while (is_digit(peek(ps)))
            ps->p++;
    }
    return 0;
}

static int parse_literal(Parser *ps, const char *word)
{
    size_t n = strlen(word);

    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "unexpected character");
    ps->p += n;
    return 0;
}

/* Validate and skip any JSON value (leading whitespace already skipped). */
static int skip_value(Parser *ps, int depth)
{
    int c = peek(ps);

    if (depth > MAX_DEPTH)
        return fail(ps, "nesting too deep");
    switch (c) {
    case -1:
        return fail(ps, "unexpected end of input");
    case '"':
        return parse_string(ps, NULL);
    case '{':
        ps->p++;
        skip_ws(ps);
        if (peek(ps) == '}') {
            ps->p++;
            return 0;
        }
        for (;;) {
            skip_ws(ps);
            if (parse_string(ps, NULL) != 0)
                return -1;
            skip_ws(ps);
            if (peek(ps) != ':')
                return fail(ps, "expected ':' after object key");
            ps->p++;
            skip_ws(ps);
            if (skip_value(ps, depth + 1) != 0)
                return -1;
            skip_ws(ps);
            if (peek(ps) == ',') {
                ps->p++;
                continue;
            }
            if (peek(ps) == '}') {
                ps->p++;
                return 0;
            }
            return fail(ps, "expected ',' or '}' in object");
        }
    case '[':
        ps->p++;
        skip_ws(ps);
        if (peek(ps) == ']') {
            ps->p++;
            return 0;
        }
        for (;;) {
            skip_ws(ps);
            if (skip_value(ps, depth + 1) != 0)
                return -1;
            skip_ws(ps);
            if (peek(ps) == ',') {
                ps->p++;
                continue;
            }
            if (peek(ps) == ']') {
                ps->p++;
                return 0;
            }
            return fail(ps, "expected ',' or ']' in list");
        }
    case 't':
        return parse_literal(ps, "true");
    case 'f':
        return parse_literal(ps, "false");
    case 'n':
        return parse_literal(ps, "null");
    default:
        if (c == '-' || is_digit(c))
            return parse_number(ps);
        return fail(ps, "unexpected character");
    }
}

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

/* Length of a valid UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];

    if (c >= 0xC2 && c <= 0xDF) {
        if (n >= 2 && (s[1] & 0xC0) == 0x80)
            return 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        if (n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
            if (c == 0xE0 && s[1] < 0xA0)
                return 0; /* overlong */
            if (c == 0xED && s[1] >= 0xA0)
                return 0; /* surrogate */
            return 3;
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        if (n >= 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80
            && (s[3] & 0xC0) == 0x80) {
            if (c == 0xF0 && s[1] < 0x90)
                return 0; /* overlong */
            if (c == 0xF4 && s[1] >= 0x90)
                return 0; /* > U+10FFFF */
            return 4;
        }
    }
    return 0;
}

/* Append s (n bytes) as a JSON string literal; invalid UTF-8 -> U+FFFD. */
static void put_json_string(Buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;

    buf_putc(b, '"');
    while (i < n) {
        unsigned char c = u[i];
        if (c == '"') {
            buf_puts(b, "\\\"");
            i++;
        } else if (c == '\\') {
            buf_puts(b, "\\\\");
            i++;
        } else if (c < 0x20) {
            char esc[8];
            switch (c) {
            case '\b': buf_puts(b, "\\b"); break;
            case '\f': buf_puts(b, "\\f"); break;
            case '\n': buf_puts(b, "\\n"); break;
            case '\r': buf_puts(b, "\\r"); break;
            case '\t': buf_puts(b, "\\t"); break;
            default:
                snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
                buf_puts(b, esc);
            }
            i++;
        } else if (c < 0x80) {
            buf_putc(b, (char)c);
            i++;
        } else {
            size_t len = utf8_seq_len(u + i, n - i);
            if (len) {
                buf_put(b, s + i, len);
                i += len;
            } else {
                buf_puts(b, "\\ufffd");
                i++;
            }
        }
    }
    buf_putc(b, '"');
}

/* The next letter for a single ASCII letter, or 0 if s is not one. */
static char next_letter(const char *s, size_t n)
{
    char c;

    if (n != 1)
        return 0;
    c = s[0];
    if (c >= 'a' && c <= 'z')
        return c == 'z' ? 'a' : (char)(c + 1);
    if (c >= 'A' && c <= 'Z')
        return c == 'Z' ? 'A' : (char)(c + 1);
    return 0;
}

static void emit_record(Buf *out, size_t index, int has_letter,
                        const Buf *letter)
{
    char next = 0;

    buf_puts(out, index == 0 ? "\n  " : ",\n  ");
    buf_puts(out, "{\"original_letter\": ");
    if (has_letter) {
        put_json_string(out, letter->data, letter->len);
        next = next_letter(letter->data, letter->len);
    } else {
        buf_puts(out, "null");
    }
    buf_puts(out, ", \"letter\": ");
    if (next) {
        char tmp[4];
        tmp[0] = '"';
        tmp[1] = next;
        tmp[2] = '"';
        buf_put(out, tmp, 3);
    } else {
        buf_puts(out, "null");
    }
    buf_putc(out, '}');
}

/*
 * Parse one record of the top-level list and append its result object
 * to out. Records that are not objects, lack "letter", or whose "letter"
 * is not a string yield {"original_letter": null, "letter": null}.
 * With duplicate "letter" keys, the last one wins.
 */
static int process_record(Parser *ps, Buf *out, size_t index)
{
    Buf key = {0, 0, 0};
    Buf letter = {0, 0, 0};
    int has_letter = 0;
    int rc = -1;

    if (peek(ps) != '{') {
        if (skip_value(ps, 1) != 0)
            goto done;
        emit_record(out, index, 0, NULL);
        rc = 0;
        goto done;
    }
    ps->p++;
    skip_ws(ps);
    if (peek(ps) == '}') {
        ps->p++;
    } else {
        for (;;) {
            skip_ws(ps);
            key.len = 0;
            if (parse_string(ps, &key) != 0)
                goto done;
            skip_ws(ps);
            if (peek(ps) != ':') {
                fail(ps, "expected ':' after object key");
                goto done;
            }
            ps->p++;
            skip_ws(ps);
            if (key.len == 6 && memcmp(key.data, "letter", 6) == 0) {
                if (peek(ps) == '"') {
                    letter.len = 0;
                    if (parse_string(ps, &letter) != 0)
                        goto done;
                    has_letter = 1;
                } else {
                    if (skip_value(ps, 2) != 0)
                        goto done;
                    has_letter = 0;
                }
            } else if (skip_value(ps, 2) != 0) {
                goto done;
            }
            skip_ws(ps);
            if (peek(ps) == ',') {
                ps->p++;
                continue;
            }
            if (peek(ps) == '}') {
                ps->p++;
                break;
            }
            fail(ps, "expected ',' or '}' in object");
            goto done;
        }
    }
    emit_record(out, index, has_letter, &letter);
    rc = 0;
done:
    free(key.data);
    free(letter.data);
    return rc;
}

/* Parse the whole input and build the whole output. */
static int process(Parser *ps, Buf *out)
{
    size_t count = 0;

    /* tolerate a UTF-8 byte order mark */
    if (ps->end - ps->p >= 3 && memcmp(ps->p, "\xEF\xBB\xBF", 3) == 0)
        ps->p += 3;
    skip_ws(ps);
    if (peek(ps) != '[')
        return fail(ps, peek(ps) < 0 ? "empty input, expected a JSON list"
                                     : "expected a JSON list ('[')");
    ps->p++;
    buf_putc(out, '[');
    skip_ws(ps);
    if (peek(ps) == ']') {
        ps->p++;
    } else {
        for (;;) {
            skip_ws(ps);
            if (process_record(ps, out, count) != 0)
                return -1;
            count++;
            skip_ws(ps);
            if (peek(ps) == ',') {
                ps->p++;
                continue;
            }
            if (peek(ps) == ']') {
                ps->p++;
                break;
            }
            return fail(ps, "expected ',' or ']' in list");
        }
    }
    skip_ws(ps);
    if (ps->p != ps->end)
        return fail(ps, "trailing data after the list");
    buf_puts(out, count ? "\n]\n" : "]\n");
    return 0;
}

/* ------------------------------------------------------------------ */
/* Files, arguments, CPU burn                                          */
/* ------------------------------------------------------------------ */

static int read_file(const char *path, Buf *b)
{
    FILE *f = fopen(path, "rb");
    int err;

    if (!f) {
        fprintf(stderr, "%s: cannot open input '%s': %s\n", prog, path,
                strerror(errno));
        return -1;
    }
    for (;;) {
        size_t n;
        buf_reserve(b, 65536);
        n = fread(b->data + b->len, 1, b->cap - b->len, f);
        b->len += n;
        if (n == 0)
            break;
    }
    err = errno;
    if (ferror(f)) {
        fprintf(stderr, "%s: cannot read input '%s': %s\n", prog, path,
                strerror(err));
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

static int write_file(const char *path, const Buf *b)
{
    FILE *f = fopen(path, "wb");
    struct stat st;
    int ok, regular;

    if (!f) {
        fprintf(stderr, "%s: cannot open output '%s': %s\n", prog, path,
                strerror(errno));
        return -1;
    }
    /* only ever delete a partial regular file, never e.g. a device */
    regular = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode);
    ok = fwrite(b->data, 1, b->len, f) == b->len;
    ok = (fflush(f) == 0) && ok;
    if (!ok) {
        int err = errno;
        fclose(f);
        if (regular)
            remove(path);
        fprintf(stderr, "%s: cannot write output '%s': %s\n", prog, path,
                strerror(err));
        return -1;
    }
    if (fclose(f) != 0) {
        int err = errno;
        if (regular)
            remove(path);
        fprintf(stderr, "%s: cannot write output '%s': %s\n", prog, path,
                strerror(err));
        return -1;
    }
    return 0;
}

/* Parse a duration in seconds; returns 0 on success. */
static int parse_seconds(const char *s, double *out)
{
    char *end;
    double v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE)
        return -1;
    if (!(v >= 0.0 && v <= MAX_BURN_SECONDS)) /* also rejects NaN */
        return -1;
    *out = v;
    return 0;
}

static double elapsed_since(const struct timespec *t0)
{
    struct timespec now;

    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
        return -1.0;
    return (double)(now.tv_sec - t0->tv_sec)
           + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static void burn_cpu(double seconds)
{
    struct timespec t0;
    volatile unsigned long sink = 0;
    unsigned long x = 2463534242UL;

    if (seconds <= 0.0)
        return;
    if (clock_gettime(CLOCK_MONOTONIC, &t0) != 0) {
        fprintf(stderr, "%s: warning: clock_gettime failed, skipping burn\n",
                prog);
        return;
    }
    for (;;) {
        double e;
        int i;
        for (i = 0; i < 20000; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        sink += x;
        e = elapsed_since(&t0);
        if (e < 0.0 || e >= seconds)
            break;
    }
    (void)sink;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: %s <input_file> <output_file> [burn_seconds]\n"
            "  burn_seconds defaults to $ALPHABET_BURN_SECONDS, else %.1f\n",
            prog, DEFAULT_BURN_SECONDS);
}

int main(int argc, char **argv)
{
    Buf in = {0, 0, 0};
    Buf out = {0, 0, 0};
    Parser ps;
    double burn = DEFAULT_BURN_SECONDS;
    const char *env;

    if (argc > 0 && argv[0] && argv[0][0]) {
        const char *slash = strrchr(argv[0], '/');
        prog = slash ? slash + 1 : argv[0];
    }
    if (argc < 3 || argc > 4) {
        usage();
        return 1;
    }

    env = getenv("ALPHABET_BURN_SECONDS");
    if (env && *env && parse_seconds(env, &burn) != 0) {
        fprintf(stderr,
                "%s: warning: ignoring invalid ALPHABET_BURN_SECONDS='%s'\n",
                prog, env);
        burn = DEFAULT_BURN_SECONDS;
    }
    if (argc == 4 && parse_seconds(argv[3], &burn) != 0) {
        fprintf(stderr,
                "%s: invalid burn_seconds '%s' (want a number 0..%g)\n",
                prog, argv[3], MAX_BURN_SECONDS);
        usage();
        return 1;
    }

    if (read_file(argv[1], &in) != 0)
        return 1;

    memset(&ps, 0, sizeof ps);
    ps.start = in.data ? in.data : "";
    ps.p = ps.start;
    ps.end = ps.start + in.len;
    if (process(&ps, &out) != 0) {
        const char *q;
        unsigned long line = 1, col = 1;
        for (q = ps.start; q < ps.errat; q++) {
            if (*q == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        fprintf(stderr, "%s: malformed JSON in '%s' at line %lu column %lu: %s\n",
                prog, argv[1], line, col, ps.err);
        free(in.data);
        free(out.data);
        return 2;
    }
    free(in.data);

    if (write_file(argv[2], &out) != 0) {
        free(out.data);
        return 1;
    }
    free(out.data);

    burn_cpu(burn);
    return 0;
}
