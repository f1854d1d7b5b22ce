/* The real-node tests' image (built with gcc -static: one file, nothing else in the image).
 *   http_echo [PORT]              answer every HTTP request with "<hostname>\n" (port 8080 default);
 *                                 exits on SIGTERM (pid 1 in a container has no default handler)
 *   http_echo probe IP:PORT ...   connect to each (a pod's view of Services); exit 0 if all answer */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static int probe(int n, char **targets) {
    int failed = 0;
    for (int i = 0; i < n; i++) {
        char ip[64];
        struct sockaddr_in to;
        const char *colon = strrchr(targets[i], ':');
        if (colon == NULL || (size_t)(colon - targets[i]) >= sizeof(ip)) { failed = 1; continue; }
        memcpy(ip, targets[i], (size_t)(colon - targets[i]));
        ip[colon - targets[i]] = 0;
        memset(&to, 0, sizeof(to));
        to.sin_family = AF_INET;
        to.sin_port = htons((unsigned short)atoi(colon + 1));
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int ok = s >= 0 && inet_pton(AF_INET, ip, &to.sin_addr) == 1 &&
                 connect(s, (struct sockaddr *)&to, sizeof(to)) == 0;
        printf("probe %s %s\n", targets[i], ok ? "ok" : "failed");
        if (!ok) failed = 1;
        if (s >= 0) close(s);
    }
    fflush(stdout);
    return failed;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "probe") == 0) {
        alarm(10); /* an unanswered SYN would otherwise wait minutes */
        return probe(argc - 2, argv + 2);
    }
    int port = argc > 1 ? atoi(argv[1]) : 8080;
    char host[256] = "unknown";
    char reply[512];
    char buf[4096];
    struct sockaddr_in addr;
    int one = 1;
    int srv;

    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    gethostname(host, sizeof(host) - 1);
    int body_len = (int)strlen(host) + 1;
    snprintf(reply, sizeof(reply),
             "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
             body_len, host);
    srv = socket(AF_INET, SOCK_STREAM, 0);
    if (srv < 0) { perror("socket"); return 1; }
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons((unsigned short)port);
    if (bind(srv, (struct sockaddr *)&addr, sizeof(addr)) < 0) { perror("bind"); return 1; }
    if (listen(srv, 64) < 0) { perror("listen"); return 1; }
    fprintf(stderr, "http-echo: %s listening on :%d\n", host, port);
    for (;;) {
        int c = accept(srv, NULL, NULL);
        if (c < 0) continue;
        (void)read(c, buf, sizeof(buf));
        (void)write(c, reply, strlen(reply));
        close(c);
    }
}
