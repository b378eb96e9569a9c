; Inno Setup script of the Windows installer: ClosedMesh-Windows-x64-Setup.exe.
; Written for Windows and run by .github/workflows/release.yml (iscc); not built on the Linux development
; machine (see docs/packaging.md).
;
;   iscc /DAppVersion=0.1.0 /DOpenMPDll=C:\path\to\vcomp140.dll installers\windows\closedmesh.iss
;
; - per-user install without administrator rights, in %LOCALAPPDATA%\Programs\ClosedMesh;
; - a Start menu entry; optional start at login (the same Run value the app's own setting writes,
;   app/autostart.py WindowsRunKey: HKCU\...\Run, value "ClosedMesh");
; - the uninstaller stops the app (and its engine workers and nats-server), removes the start-at-login
;   value whoever set it, and keeps the downloaded models and settings unless the user asks;
; - llama.dll is built with MSVC's OpenMP: vcomp140.dll goes next to it in _internal\llama_cpp\lib (and
;   next to each CPU variant), where llama-cpp-python adds the DLL search directory, since a DLL loaded
;   that way does not search the bundle's top folder.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef OpenMPDll
  #error Pass /DOpenMPDll=<path to vcomp140.dll> (from the MSVC redistributable, Microsoft.VC143.OpenMP)
#endif
#define Bundle "..\..\dist\closedmesh"

[Setup]
AppId={{6E3A4C1B-7F2D-4B8E-9C55-0D1E2F3A4B5C}
AppName=ClosedMesh
AppVersion={#AppVersion}
AppPublisher=ClosedMesh contributors
DefaultDirName={autopf}\ClosedMesh
DefaultGroupName=ClosedMesh
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=ClosedMesh-Windows-x64-Setup
SetupIconFile=..\..\assets\generated\closedmesh.ico
UninstallDisplayIcon={app}\closedmesh-app.exe
UninstallDisplayName=ClosedMesh
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
CloseApplications=force
RestartApplications=no

[Tasks]
Name: "startatlogin"; Description: "Start ClosedMesh when I sign in to Windows"; Flags: unchecked

[Files]
Source: "{#Bundle}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs
Source: "{#OpenMPDll}"; DestDir: "{app}\_internal\llama_cpp\lib"; Flags: ignoreversion
; Next to each CPU variant the bundle has (package.sh --variants), decided when the installer is built.
#define Variants "..\..\dist\closedmesh\_internal\llama_variants"
#if DirExists(AddBackslash(SourcePath) + Variants + "\avx512")
Source: "{#OpenMPDll}"; DestDir: "{app}\_internal\llama_variants\avx512"; Flags: ignoreversion
#endif
#if DirExists(AddBackslash(SourcePath) + Variants + "\avx2")
Source: "{#OpenMPDll}"; DestDir: "{app}\_internal\llama_variants\avx2"; Flags: ignoreversion
#endif
#if DirExists(AddBackslash(SourcePath) + Variants + "\x86-64-v2")
Source: "{#OpenMPDll}"; DestDir: "{app}\_internal\llama_variants\x86-64-v2"; Flags: ignoreversion
#endif

[Icons]
Name: "{group}\ClosedMesh"; Filename: "{app}\closedmesh-app.exe"; Comment: "Your local AI node"
Name: "{group}\Uninstall ClosedMesh"; Filename: "{uninstallexe}"

[Registry]
Root: HKCU; Subkey: "Software\Microsoft\Windows\CurrentVersion\Run"; ValueType: string; ValueName: "ClosedMesh"; \
    ValueData: """{app}\closedmesh-app.exe"" --minimized"; Tasks: startatlogin

[Run]
Filename: "{app}\closedmesh-app.exe"; Description: "Start ClosedMesh now"; Flags: nowait postinstall skipifsilent

[Code]
const
  RunKey = 'Software\Microsoft\Windows\CurrentVersion\Run';

{ Every process started from the install folder: the app, `closedmesh serve`, the engine workers and a
  hub's nats-server. By path, so another copy of ClosedMesh elsewhere is left alone. }
procedure StopClosedMesh();
var
  ResultCode: Integer;
begin
  Exec(ExpandConstant('{sys}\WindowsPowerShell\v1.0\powershell.exe'),
    '-NoProfile -NonInteractive -Command "Get-Process | Where-Object { $_.Path -and $_.Path.StartsWith(''' +
    ExpandConstant('{app}') + '\'', [StringComparison]::OrdinalIgnoreCase) } | Stop-Process -Force"',
    '', SW_HIDE, ewWaitUntilTerminated, ResultCode);
end;

function PrepareToInstall(var NeedsRestart: Boolean): String;
begin
  StopClosedMesh();  { an upgrade replaces files the running app holds open }
  Result := '';
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if CurUninstallStep = usUninstall then
  begin
    StopClosedMesh();
    { Whoever turned it on (this installer or the app's setting), start at login goes with the app. }
    RegDeleteValue(HKEY_CURRENT_USER, RunKey, 'ClosedMesh');
  end;
  if CurUninstallStep = usPostUninstall then
  begin
    if DirExists(ExpandConstant('{localappdata}\ClosedMesh')) and not UninstallSilent() then
      if MsgBox('Also delete your downloaded models and ClosedMesh settings?' + #13#10 +
                '(' + ExpandConstant('{localappdata}\ClosedMesh') + ')', mbConfirmation, MB_YESNO or MB_DEFBUTTON2) = IDYES then
        DelTree(ExpandConstant('{localappdata}\ClosedMesh'), True, True, True);
  end;
end;
