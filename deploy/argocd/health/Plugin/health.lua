-- Argo CD health of an Aleph Plugin (aleph.dev/v1alpha1).
-- The rules of this kind only: render-cm-patch.sh puts health/common.lua (the shared part,
-- which this uses) before them to make the script that Argo CD runs.
--
-- Healthy: Ready=True for the current generation: the declared version runs.
-- Suspended: disabled (spec.disabled): scaled to zero on purpose, configuration kept.
-- Progressing: no status yet, status of an older generation, being deleted, or a rollout in
--   progress (Progressing=True).
-- Degraded: Degraded=True (for example a version that failed and was rolled back to the last
--   good one, which keeps serving), or Ready=False with nothing in progress.

return readyHealth({
  before = function()
    local degraded = degradedHealth()
    if degraded ~= nil then
      return degraded
    end
    if obj.spec ~= nil and obj.spec.disabled == true then
      return { status = "Suspended", message = "Disabled: scaled to zero" }
    end
    return nil
  end,
  reportProgressing = true,
})
