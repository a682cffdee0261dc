-- Argo CD health check for modelship.io/ModelDeployment (see docs/argocd.md).
-- Written for gopher-lua (Lua 5.1): Argo CD sets `obj` and reads the returned table.
local hs = {}

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
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
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

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(ready, message_of(degraded, "Failed"))
  return hs
end
if (degraded ~= nil and degraded.status == "True") or phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = message_of(degraded, message_of(ready, "Degraded"))
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = phase .. ": " .. message_of(condition(status, "Progressing"), message_of(ready, "in progress"))
return hs
