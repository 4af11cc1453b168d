-- Shared part of the Argo CD health checks of Aleph's kinds (aleph.dev/v1alpha1).
-- render-cm-patch.sh puts it before each kind's rules (health/<Kind>/health.lua) to make that
-- kind's self-contained script in argocd-cm.
-- Runs in Argo CD's gopher-lua sandbox: Lua 5.1 with the base and table libraries only, so no
-- string functions or methods. See deploy/argocd/README.md for what each status means.

local function findCondition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

-- A condition's message, else its reason, else the fallback.
local function describe(condition, fallback)
  if condition ~= nil then
    if condition.message ~= nil and condition.message ~= "" then
      return condition.message
    end
    if condition.reason ~= nil and condition.reason ~= "" then
      return condition.reason
    end
  end
  return fallback
end

-- Why the status does not describe the current spec yet, or nil when it does.
local function staleness(condition)
  local generation = obj.metadata.generation
  if generation == nil then
    return nil
  end
  local observed = obj.status.observedGeneration
  if condition ~= nil and condition.observedGeneration ~= nil then
    observed = condition.observedGeneration
  end
  if observed == nil or observed < generation then
    return "Waiting for the operator to observe generation " .. generation
  end
  return nil
end

-- The operator is still working towards Ready: it says so with Progressing=True or with one of
-- these reasons on Ready=False. Any other Ready=False is a failure that needs a person.
local convergingReasons = {
  Creating = true,
  Deleting = true,
  Pending = true,
  Progressing = true,
  Provisioning = true,
  Reconciling = true,
  RollingOut = true,
  Updating = true,
  Waiting = true,
}

local function converging(ready)
  if ready.reason == "InvalidSpec" then
    return false
  end
  local progressing = findCondition("Progressing")
  if progressing ~= nil and progressing.status == "True" then
    return true
  end
  return convergingReasons[ready.reason] == true
end

-- Progressing while the object is being deleted (naming the finalizers), else nil.
local function deletionHealth()
  if obj.metadata.deletionTimestamp ~= nil then
    local message = "Being deleted"
    if obj.metadata.finalizers ~= nil and #obj.metadata.finalizers > 0 then
      message = "Being deleted; waiting for finalizers: " .. table.concat(obj.metadata.finalizers, ", ")
    end
    return { status = "Progressing", message = message }
  end
  return nil
end

-- Degraded when a Degraded=True condition of the current generation says so, else nil.
local function degradedHealth()
  local degraded = findCondition("Degraded")
  if degraded ~= nil and degraded.status == "True" and staleness(degraded) == nil then
    return { status = "Degraded", message = describe(degraded, "Degraded") }
  end
  return nil
end

-- The health of a kind read from its Ready condition. The kind's rules (all optional):
--   before(): a result that wins over Ready, checked once the status is of the current
--     generation, or nil;
--   suspended(): the message when a Ready object is stopped on purpose (Suspended), or nil;
--   reportProgressing: a Progressing=True condition names what is in progress when not Ready;
--   notReady: the Degraded message when the Ready condition has none ("Not ready");
--   working: the Progressing message when the Ready condition has none ("Reconciling").
local function readyHealth(rules)
  local deleting = deletionHealth()
  if deleting ~= nil then
    return deleting
  end

  if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
    return { status = "Progressing", message = "Waiting for the operator to report status" }
  end

  local stale = staleness(nil)
  if stale ~= nil then
    return { status = "Progressing", message = stale }
  end

  if rules.before ~= nil then
    local result = rules.before()
    if result ~= nil then
      return result
    end
  end

  local ready = findCondition("Ready")
  if ready == nil then
    return { status = "Progressing", message = "Waiting for the Ready condition" }
  end
  stale = staleness(ready)
  if stale ~= nil then
    return { status = "Progressing", message = stale }
  end

  if ready.status == "True" then
    if rules.suspended ~= nil then
      local suspended = rules.suspended()
      if suspended ~= nil then
        return { status = "Suspended", message = suspended }
      end
    end
    return { status = "Healthy", message = describe(ready, "Ready") }
  end
  if ready.status == "False" and not converging(ready) then
    return { status = "Degraded", message = describe(ready, rules.notReady or "Not ready") }
  end
  if rules.reportProgressing then
    local progressing = findCondition("Progressing")
    if progressing ~= nil and progressing.status == "True" then
      -- What is in progress, else what is not ready yet.
      local message = progressing.message
      if message == nil or message == "" then
        message = describe(ready, describe(progressing, "Progressing"))
      end
      return { status = "Progressing", message = message }
    end
  end
  return { status = "Progressing", message = describe(ready, rules.working or "Reconciling") }
end
