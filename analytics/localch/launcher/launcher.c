// gradeline-chdb serves the ClickHouse engine of libchdb on loopback: it
// runs the clickhouse-local command line (query_stable_v2) with listen
// options, starts the TCP and HTTP listeners and then runs a query that never
// ends. Usage: gradeline-chdb DATA_DIR TCP_PORT HTTP_PORT
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

struct local_result_v2;
extern struct local_result_v2 *query_stable_v2(int argc, char **argv);

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DATA_DIR TCP_PORT HTTP_PORT\n", argv[0]);
        return 2;
    }
    // Die with the parent so no engine outlives the test or service that
    // started it; if the parent already died before prctl, stop now.
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
        fprintf(stderr, "gradeline-chdb: parent gone\n");
        return 3;
    }
    char path[4096], tcp[64], http[64];
    snprintf(path, sizeof path, "--path=%s", argv[1]);
    snprintf(tcp, sizeof tcp, "--tcp_port=%s", argv[2]);
    snprintf(http, sizeof http, "--http_port=%s", argv[3]);
    char *args[] = {"clickhouse", path, "--listen_host=127.0.0.1", tcp, http, "--multiquery",
        "--query=SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; "
        "SELECT sleepEachRow(1) FROM system.numbers SETTINGS max_block_size = 1 FORMAT Null",
        NULL};
    query_stable_v2(7, args);
    fprintf(stderr, "gradeline-chdb: engine stopped\n");
    return 1;
}
