/* Bench probe (never in a product initrd): runs CMD as a child and writes
 * "IHB start NAME" before it and "IHB end NAME maxrss=KIB status=N" after
 * it to /dev/kmsg: the kernel's timestamps give the run time, wait4()'s
 * ru_maxrss the peak RSS of the child and of the children it waited for
 * (mkfs, for both stacks). Exits with the child's status.
 * Usage: ih-maxrss NAME CMD [ARG...] */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static void kmsg(const char *what, const char *name, long rss, int status)
{
    FILE *k = fopen("/dev/kmsg", "w");
    if (!k)
        return;
    if (rss < 0)
        fprintf(k, "IHB %s %s\n", what, name);
    else
        fprintf(k, "IHB %s %s maxrss=%ld status=%d\n", what, name, rss, status);
    fclose(k);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: ih-maxrss NAME CMD [ARG...]\n");
        return 2;
    }
    kmsg("start", argv[1], -1, 0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("ih-maxrss: fork");
        return 1;
    }
    if (pid == 0) {
        execv(argv[2], argv + 2);
        perror("ih-maxrss: exec");
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) < 0) {
        perror("ih-maxrss: wait4");
        return 1;
    }
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    kmsg("end", argv[1], ru.ru_maxrss, code);
    return code;
}
