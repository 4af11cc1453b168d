module aleph.dev/e2e/cluster/coredns

go 1.26.0

require github.com/coredns/coredns v1.15.0
