-- Argo CD health of an Aleph Tenant (aleph.dev/v1alpha1).
-- The rules of this kind only: render-cm-patch.sh puts health/common.lua (the shared part,
-- which this uses) before them to make the script that Argo CD runs.
--
-- Healthy: Ready=True for the current generation: namespaces, quotas, policies and role
--   bindings are in place.
-- Suspended: ready but cordoned (spec.cordoned): new pods are refused on purpose.
-- Progressing: no status yet, status of an older generation, being deleted, or Ready not True
--   while the operator is still working (Progressing=True or a converging reason).
-- Degraded: Ready=False for any other reason (InvalidSpec, a namespace owned by someone else,
--   a forbidden request...), with the condition's message.

return readyHealth({
  suspended = function()
    if obj.spec ~= nil and obj.spec.cordoned == true then
      return "Cordoned: new pods are refused in every tenant namespace"
    end
    return nil
  end,
})
