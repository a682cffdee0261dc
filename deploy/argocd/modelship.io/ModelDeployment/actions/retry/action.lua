-- Argo CD action "retry" of modelship.io/ModelDeployment: release the aborted canary
-- revision again, as a new attempt (see docs/argocd.md).
-- Sets the modelship.io/retry annotation to <revision>@s<step>a<attempt> from status.canary:
-- a new value for each step and attempt, and the operator acts once per value.
local annotation = "modelship.io/retry"
local canary = nil
if obj.status ~= nil then
  canary = obj.status.canary
end
if canary == nil or canary.revision == nil then
  error("retry: the ModelDeployment has no canary release (status.canary is empty)", 0)
end
if canary.phase ~= "Aborted" then
  error("retry: canary " .. canary.revision .. " is " .. tostring(canary.phase) ..
    "; retry applies only while it is Aborted", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations[annotation] = canary.revision .. "@s" .. tostring(canary.step or 0) ..
  "a" .. tostring(canary.attempt or 1)
return obj
