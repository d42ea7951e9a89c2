/*
 * cli_out.c - see cli_out.h.
 */
#include "smtptap/cli_out.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "smtptap/log.h"

/* path NULL or "-": standard output.  Refuses to truncate the database
 * being read (`-o smtptap.db` is a slip of the fingers).  Returns 0, or -1
 * (reported). */
int
cli_out_open(struct cli_out *o, const char *path, const char *db)
{
	struct stat st, dbst;
	int fd;

	memset(o, 0, sizeof(*o));
	if (path == NULL || strcmp(path, "-") == 0) {
		o->f = stdout;
		o->name = "standard output";
		o->is_stdout = true;
		return 0;
	}
	if (strlen(path) >= sizeof(o->path)) {
		log_warnx("-o %s: path too long", path);
		return -1;
	}
	strcpy(o->path, path);
	o->name = o->path;
	if (db != NULL && stat(path, &st) == 0 && stat(db, &dbst) == 0 && st.st_dev == dbst.st_dev &&
	    st.st_ino == dbst.st_ino) {
		log_warnx("-o %s: that is the database being read (--db %s); choose another file", path, db);
		return -1;
	}
	/* 0600: recorded mail is often private (password resets, invoices). */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_warnx("cannot create %s: %s (check the -o path)", path, strerror(errno));
		return -1;
	}
	o->is_reg = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	if ((o->f = fdopen(fd, "w")) == NULL) {
		log_warnx("cannot write %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return 0;
}

/* Note the first write error on o, while errno still tells what it was. */
void
cli_out_check(struct cli_out *o)
{
	if (o->werr == 0 && ferror(o->f))
		o->werr = errno != 0 ? errno : EIO;
}

/* Flush and close (stdout is only flushed).  A partial regular file is
 * removed, so that no truncated .eml passes for a whole one.  Returns 0,
 * or -1 (reported). */
int
cli_out_close(struct cli_out *o)
{
	bool removed = false;

	if (o->f == NULL)
		return 0;
	cli_out_check(o);
	errno = 0;
	if (fflush(o->f) != 0 && o->werr == 0)
		o->werr = errno != 0 ? errno : EIO;
	if (!o->is_stdout && fclose(o->f) != 0 && o->werr == 0)
		o->werr = errno != 0 ? errno : EIO;
	o->f = NULL;
	if (o->werr == 0)
		return 0;
	if (o->is_reg && unlink(o->path) == 0)
		removed = true;
	log_warnx("writing %s: %s%s", o->name, strerror(o->werr), removed ? " (incomplete file removed)" : "");
	return -1;
}

void
cli_out_discard(struct cli_out *o)
{
	if (o->f == NULL)
		return;
	if (o->is_stdout) {
		fflush(o->f);
	} else {
		fclose(o->f);
		if (o->is_reg && unlink(o->path) == 0)
			log_warnx("%s: incomplete file removed", o->path);
	}
	o->f = NULL;
}

/* Where to write `name` given -o: into it when it is a directory, else to
 * it (NULL: standard output).  Returns 0, or -1 (reported). */
int
cli_out_target(char *buf, size_t bufsz, const char *opath, const char *name)
{
	struct stat st;
	int n;

	if (opath == NULL || strcmp(opath, "-") == 0 || stat(opath, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(buf, bufsz, "%s", opath != NULL ? opath : "-");
		return 0;
	}
	n = snprintf(buf, bufsz, "%s/%s", opath, name);
	if (n < 0 || (size_t)n >= bufsz) {
		log_warnx("-o %s: path too long", opath);
		return -1;
	}
	return 0;
}
