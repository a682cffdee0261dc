-- Argo CD health check for modelship.io/ModelDeployment (see docs/argocd.md).
-- Lua 5.1 as Argo CD runs custom scripts: base functions and `table` only (no string, math or
-- os library, so no resource.customizations.useOpenLibs is needed). Argo CD sets the global
-- `obj` (the live object) and reads the returned {status, message}.
local hs = {}

local function text(value, fallback)
  if value ~= nil and value ~= "" then
    return value
  end
  return fallback
end

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil then
    return text(c.message, fallback)
  end
  return fallback
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the ModelDeployment"
  return hs
end

-- A status written for an older spec says nothing about the current one.
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (status describes generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local ready = condition(status, "Ready")
local degraded = condition(status, "Degraded")
local phase = status.phase or "Pending"
local canary = status.canary
if canary ~= nil and canary.revision == nil then
  canary = nil
end

-- "step 2/3": 1-based; the total only when the spec lists its steps (else the defaults apply).
local function step_of(c)
  local s = "step " .. tostring((c.step or 0) + 1)
  local rollout = obj.spec and obj.spec.rollout
  if rollout ~= nil and rollout.steps ~= nil and #rollout.steps > 0 then
    s = s .. "/" .. tostring(#rollout.steps)
  end
  return s
end

local function weights_of(c)
  return "weight " .. tostring(c.weight or 0) .. "% of desired " ..
    tostring(c.desiredWeight or 0) .. "%"
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(ready, message_of(degraded, "Failed"))
  return hs
end

local degraded_now = (degraded ~= nil and degraded.status == "True") or phase == "Degraded"

-- A rolled-back release (failed analysis, abort, progress deadline): the canary's message
-- carries the measured values. Once the spec moves on (a revert to the stable version) the
-- aborted canary stays on record but degrades nothing, so the operator's verdict decides.
-- A release still running past its deadline is degraded before the operator rolls it back.
if canary ~= nil and ((canary.phase == "Aborted" and degraded_now) or
    (canary.reason == "ProgressDeadlineExceeded" and canary.phase ~= "Succeeded" and
     canary.phase ~= "Aborted")) then
  hs.status = "Degraded"
  hs.message = text(canary.message, message_of(degraded,
    "Canary " .. canary.revision .. " aborted (" .. text(canary.reason, "no reason given") .. ")"))
  return hs
end

if degraded_now then
  hs.status = "Degraded"
  hs.message = message_of(degraded, message_of(ready, "Degraded"))
  return hs
end

if canary ~= nil then
  local name = obj.metadata.name or "<name>"
  if canary.phase == "Paused" and canary.reason == "WaitingForPromotion" then
    hs.status = "Suspended"
    hs.message = "Canary " .. canary.revision .. " waits for promotion at " .. step_of(canary) ..
      " (" .. weights_of(canary) .. "): run the promote action (promote-full skips the " ..
      "remaining steps) or `kubectl modelship promote " .. name .. "`"
    return hs
  end
  if canary.phase == "Progressing" or canary.phase == "Paused" then
    local what = "at"
    if canary.phase == "Paused" then
      what = "paused (" .. text(canary.reason, "Paused") .. ") at"
    end
    hs.status = "Progressing"
    hs.message = "Canary " .. canary.revision .. " " .. what .. " " .. step_of(canary) .. ", " ..
      weights_of(canary)
    if text(canary.message, nil) ~= nil then
      hs.message = hs.message .. ": " .. canary.message
    end
    return hs
  end
  if canary.phase == "Promoting" then
    hs.status = "Progressing"
    hs.message = "Canary " .. canary.revision .. " promoting: " ..
      text(canary.message, "moving all traffic to it")
    return hs
  end
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = phase .. ": " .. message_of(condition(status, "Progressing"),
  message_of(ready, "in progress"))
return hs
