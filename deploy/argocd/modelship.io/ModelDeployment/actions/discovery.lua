-- Argo CD resource actions of modelship.io/ModelDeployment: which apply now (see
-- docs/argocd.md). Each action sets a manual-control annotation to a value naming the canary's
-- revision; an action is disabled when the operator would ignore it.
local phase = nil
if obj.status ~= nil and obj.status.canary ~= nil and obj.status.canary.revision ~= nil then
  phase = obj.status.canary.phase
end
local running = phase == "Progressing" or phase == "Paused"

local actions = {}
actions["promote"] = {
  ["displayName"] = "Promote (next step)",
  ["iconClass"] = "fa fa-fw fa-forward",
  ["disabled"] = not running,
}
actions["promote-full"] = {
  ["displayName"] = "Promote full (skip the remaining steps)",
  ["iconClass"] = "fa fa-fw fa-fast-forward",
  ["disabled"] = not running,
}
actions["abort"] = {
  ["displayName"] = "Abort (roll back)",
  ["iconClass"] = "fa fa-fw fa-undo",
  ["disabled"] = not (running or phase == "Promoting"),
}
actions["retry"] = {
  ["displayName"] = "Retry the aborted release",
  ["iconClass"] = "fa fa-fw fa-redo-alt",
  ["disabled"] = phase ~= "Aborted",
}
return actions
