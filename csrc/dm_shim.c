/* Glue between libdevmapper's printf-style log callback and Python.
 *
 * libdevmapper reports failures as 0/1 return codes and explains them only
 * through its logger.  cffi cannot take a variadic callback, so this
 * trampoline formats each message and hands the finished line to
 * dmthin_log_line (an extern "Python" function, see dmthin/dm/_lib.py),
 * which sends it to `logging` and keeps error lines for the exception
 * messages.  No policy here. */
#include <stdarg.h>
#include <stdio.h>

static void dmthin_log_line(int level, const char *file, int line,
                            int dm_errno_or_class, const char *text);

/* The most verbose syslog level passed on (libdevmapper logs a dozen debug
 * lines per task; formatting them and calling into Python for each is most
 * of the binding's own cost).  Set by Python from its logger's level. */
static int dmthin_log_max_level = 7;

static void dmthin_set_log_level(int level)
{
    dmthin_log_max_level = level;
}

static void dmthin_log_trampoline(int level, const char *file, int line,
                                  int dm_errno_or_class, const char *f, ...)
{
    char buf[2048];
    va_list ap;

    if ((level & 7) > dmthin_log_max_level)
        return;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    dmthin_log_line(level, file, line, dm_errno_or_class, buf);
}

/* Route libdevmapper's log through Python (on=1) or back to its default
 * stderr logger (on=0). */
static void dmthin_install_logger(int on)
{
    dm_log_with_errno_init(on ? dmthin_log_trampoline : NULL);
}
