/*
 * The pod sandbox's process: it holds the pod's namespaces open for as long as
 * the pod lives, so it must stay alive doing nothing, stop at once when the
 * runtime asks (SIGINT or SIGTERM), and, being PID 1 of the pod when the PID
 * namespace is shared, reap the orphans that get re-parented to it.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;

static void on_stop(int sig) {
	(void)sig;
	stopping = 1;
}

static void on_child(int sig) {
	int saved = errno; /* waitpid must not clobber errno of the interrupted code */
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
	errno = saved;
}

static void handle(int sig, void (*handler)(int)) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	/* SA_NOCLDSTOP: stopped children are not ours to reap. */
	sa.sa_flags = sig == SIGCHLD ? SA_NOCLDSTOP | SA_RESTART : 0;
	if (sigaction(sig, &sa, NULL) < 0) {
		perror("pause: sigaction");
		exit(1);
	}
}

int main(int argc, char **argv) {
	(void)argv;
	if (argc > 1) {
		fprintf(stderr, "pause: takes no arguments\n");
		return 1;
	}
	/* PID 1 gets no default signal actions: without handlers SIGTERM would be ignored. */
	handle(SIGINT, on_stop);
	handle(SIGTERM, on_stop);
	handle(SIGCHLD, on_child);
	/*
	 * Keep the stop signals blocked except while waiting: a signal landing
	 * between the test of `stopping` and the wait would otherwise be missed
	 * and leave the process asleep until the next one.
	 */
	sigset_t stops, waiting;
	sigemptyset(&stops);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGTERM);
	sigprocmask(SIG_BLOCK, &stops, &waiting);
	sigdelset(&waiting, SIGINT);
	sigdelset(&waiting, SIGTERM);
	while (!stopping)
		sigsuspend(&waiting); /* pause(), with the stop signals let in atomically */
	return 0;
}
