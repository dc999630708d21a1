/* The server's ceiling for one reader, run by the peers benchmark: a libpq loop that receives pgoutput over
 * START_REPLICATION and counts its Insert, Update and Delete messages, parsing and acknowledging nothing.
 *
 *   pgfloor CONNINFO SLOT PUBLICATION N NAP_US
 *
 * When no complete message is buffered it naps NAP_US microseconds before reading the socket again. A reader
 * that takes every message as soon as it arrives makes the walsender send message by message (and spend its
 * CPU on that); one that lags lets the socket fill, and the walsender sends in bulk, as it does for any
 * consumer slower than the server. The nap gives the second case with nothing else to slow it.
 * Same protocol as the other clients: READY, then DONE {"n", "t_first", "t_last"} at the N-th change, then it
 * waits to be killed. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <unistd.h>

#define XLOGDATA_HEADER 25 /* 'w', start LSN, end LSN, send time */

static double now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec / 1e6;
}

static int fail(PGconn *conn) {
    fprintf(stderr, "pgfloor: %s", PQerrorMessage(conn));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: pgfloor CONNINFO SLOT PUBLICATION N NAP_US\n");
        return 2;
    }
    long n = atol(argv[4]), seen = 0;
    useconds_t nap = (useconds_t)atol(argv[5]);
    double t_first = 0;
    PGconn *conn = PQconnectdb(argv[1]);
    if (PQstatus(conn) != CONNECTION_OK) return fail(conn);
    char *slot = PQescapeIdentifier(conn, argv[2], 63), *publication = PQescapeLiteral(conn, argv[3], 200);
    if (!slot || !publication) return fail(conn);
    char command[400];
    snprintf(command, sizeof command, "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names %s)",
             slot, publication);
    PGresult *res = PQexec(conn, command);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) return fail(conn);
    PQclear(res);
    printf("READY\n");
    fflush(stdout);
    for (;;) {
        char *buf;
        int len = PQgetCopyData(conn, &buf, 1);
        if (len == 0) {
            usleep(nap);
            if (!PQconsumeInput(conn)) return fail(conn);
            continue;
        }
        if (len < 0) return fail(conn);
        if (len > XLOGDATA_HEADER && buf[0] == 'w') {
            char kind = buf[XLOGDATA_HEADER];
            if ((kind == 'I' || kind == 'U' || kind == 'D') && ++seen == 1) t_first = now();
            if (seen == n) {
                printf("DONE {\"n\": %ld, \"t_first\": %.6f, \"t_last\": %.6f}\n", seen, t_first, now());
                fflush(stdout);
                pause();
            }
        }
        PQfreemem(buf);
    }
}
