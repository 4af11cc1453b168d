-- Argo CD health of an Aleph Pipeline (aleph.dev/v1alpha1).
-- The rules of this kind only: render-cm-patch.sh puts health/common.lua (the shared part,
-- which this uses) before them to make the script that Argo CD runs.
--
-- Healthy: Ready=True for the current generation: the graph is valid and runs can be made.
-- Suspended: valid, with a cron schedule that is suspended (as Argo CD shows a suspended CronJob).
-- Progressing: no status yet, status of an older generation, being deleted.
-- Degraded: Ready=False: the graph is invalid (a cycle, an unknown dependency...), or a step
--   template a step uses is missing or does not expand; the message says what to fix. A failed run does not degrade its Pipeline; the PipelineRun shows it.

return readyHealth({
  suspended = function()
    if obj.spec ~= nil and obj.spec.schedule ~= nil and obj.spec.schedule.suspend == true then
      return "The schedule is suspended"
    end
    return nil
  end,
  notReady = "The graph is invalid",
  working = "Validating",
})
