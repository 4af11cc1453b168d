module aleph.dev/e2e/cluster/gateway-api

go 1.26.0

// Only its CRDs are used: the HTTPRoute kind the tenant admission rules cover.
require sigs.k8s.io/gateway-api v1.6.3
